// Renders the server's OpenAPI description with the vendored Swagger UI (static/vendor/swagger-ui).
// No inline script: the site's Content-Security-Policy allows only script-src 'self'.
// ?spec=/moved/openapi.json reads the description from another path of this site (settings may move it).
(function () {
  "use strict";
  var asked = new URLSearchParams(window.location.search).get("spec");
  var spec = asked && asked.charAt(0) === "/" && asked.charAt(1) !== "/" ? asked : "/api/openapi.json";
  window.ui = window.SwaggerUIBundle({
    url: spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // never ask validator.swagger.io: the page makes no request off this site
    docExpansion: "list",
    tryItOutEnabled: false,
  });
})();
