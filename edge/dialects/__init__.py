"""Views of run events in other systems' vocabularies (LocalAI, OpenAI, llm-sse)."""
