// The console's own script (loaded with htmx, same origin; the CSP allows no inline script).
// Each page's behaviour is attached from data- attributes, so templates carry no code.
"use strict";

// After an htmx swap that brought an alert, move focus to it so keyboard and screen-reader users hear it.
document.addEventListener("htmx:afterSwap", (event) => {
  const alert = event.detail.target.querySelector('[role="alert"]');
  if (alert) {
    alert.setAttribute("tabindex", "-1");
    alert.focus();
  }
});
