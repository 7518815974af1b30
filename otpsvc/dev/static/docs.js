// The API reference: Swagger UI (from the swagger-ui-bundle-v2 package) reading /openapi.yaml.
"use strict";
window.addEventListener("load", function () {
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.yaml",
    dom_id: "#swagger-ui",
    deepLinking: true,
    defaultModelsExpandDepth: 0,
    docExpansion: "list",
  });
});
