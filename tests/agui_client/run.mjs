// Runs @ag-ui/client's HttpAgent against agentstream's POST /ag-ui/{agent}, the way an AG-UI
// application does, and prints what the client made of the stream as one JSON line.
//   node run.mjs <edge url> <api key> <scenario>
// Scenarios: "server-tools" (the agent reads a file itself), "frontend-tool" (the agent calls a
// tool of the application, which answers it in a second run), "failure" (the agent's model fails).
import { HttpAgent } from "@ag-ui/client";

const [base, key, scenario] = process.argv.slice(2);
const WEATHER = {
  name: "get_weather",
  description: "Weather for a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};
const questions = {
  "server-tools": ["programmer-helper", "How many lines does pyproject.toml have?"],
  "frontend-tool": ["plain", 'Please call get_weather with {"city": "Paris"}'],
  failure: ["failing-model", "hello"],
};
const [agentName, question] = questions[scenario];
const agent = new HttpAgent({
  url: `${base}/ag-ui/${agentName}`,
  headers: { Authorization: `Bearer ${key}` },
  threadId: `thread-${scenario}-${Date.now()}`,
  initialMessages: [{ id: "user-1", role: "user", content: question }],
});
const runs = [];
const observe = (events) => ({
  onEvent({ event }) {
    events.push(event.type === "RUN_ERROR" ? `RUN_ERROR: ${event.message}` : event.type);
  },
});

async function run(parameters) {
  const events = [];
  let error = null;
  try {
    await agent.runAgent(parameters, observe(events));
  } catch (err) {
    error = String(err && err.message ? err.message : err);
  }
  runs.push({ events, error });
}

await run(scenario === "frontend-tool" ? { tools: [WEATHER] } : {});
if (scenario === "frontend-tool") {
  const call = agent.messages.at(-1).toolCalls[0];
  agent.addMessage({ id: "tool-1", role: "tool", toolCallId: call.id, content: '{"temp_c": 21}' });
  await run({ tools: [WEATHER] });
}
console.log(JSON.stringify({ runs, messages: agent.messages }));
