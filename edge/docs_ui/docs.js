// The /docs page: Swagger UI (vendored in this directory, see VERSION) showing this edge's
// /openapi.json. Everything is loaded from this edge: no validator badge (validatorUrl: null), no
// remote configuration. "Authorize" takes an API key (Bearer); it stays in this page only.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  queryConfigEnabled: false,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  defaultModelsExpandDepth: 0,
  tryItOutEnabled: false,
});
