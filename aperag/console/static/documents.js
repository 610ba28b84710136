// The documents page: the upload form's drop zone, the list of chosen files and the upload progress,
// and focus kept in the documents table when htmx replaces it. Attached from data- attributes (the CSP
// allows no inline script); without script the form still uploads as a plain multipart post.
"use strict";

(() => {
  const form = document.querySelector("[data-upload-form]");
  if (!form) {
    return;
  }
  const input = form.querySelector('input[type="file"]');
  const zone = form.querySelector("[data-dropzone]");
  const progress = form.querySelector("[data-upload-progress]");
  const selected = form.querySelector("[data-selected]");
  const button = form.querySelector('button[type="submit"]');

  const describeSelection = () => {
    if (!selected) {
      return;
    }
    const names = Array.from(input.files || []).map((f) => f.name);
    selected.textContent = names.length === 0 ? ""
      : `${names.length} file${names.length === 1 ? "" : "s"} chosen: ${names.join(", ")}`;
  };

  const setProgress = (percent) => {
    if (!progress) {
      return;
    }
    const value = Math.max(0, Math.min(100, Math.round(percent)));
    progress.value = value;
    progress.textContent = `${value}%`;
    progress.setAttribute("aria-valuetext", `${value}% uploaded`);
  };

  input.addEventListener("change", describeSelection);

  // Drop zone: files dragged onto it become the input's selection (the user then presses Upload).
  const isFileDrag = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  if (zone) {
    zone.addEventListener("dragenter", (event) => {
      if (isFileDrag(event)) {
        event.preventDefault();
        zone.classList.add("is-dragover");
      }
    });
    zone.addEventListener("dragover", (event) => {
      if (isFileDrag(event)) {
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
        zone.classList.add("is-dragover");
      }
    });
    zone.addEventListener("dragleave", (event) => {
      if (!zone.contains(event.relatedTarget)) {
        zone.classList.remove("is-dragover");
      }
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("is-dragover");
      const files = event.dataTransfer?.files;
      if (files && files.length > 0) {
        input.files = files;
        input.dispatchEvent(new Event("change", { bubbles: true }));
        input.focus();
      }
    });
  }
  // A file dropped next to the zone would make the browser leave the page (and lose what was typed).
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (isFileDrag(event) && !(zone && zone.contains(event.target))) {
        event.preventDefault();
      }
    });
  }

  // Upload progress, from htmx's XHR upload events.
  form.addEventListener("htmx:beforeRequest", (event) => {
    if (event.detail.elt === form) {
      setProgress(0);
      if (button) {
        button.disabled = true;
      }
    }
  });
  form.addEventListener("htmx:xhr:progress", (event) => {
    if (event.detail.lengthComputable && event.detail.total > 0) {
      setProgress((event.detail.loaded / event.detail.total) * 100);
    }
  });
  form.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.elt !== form) {
      return;
    }
    if (button) {
      button.disabled = false;
    }
    if (event.detail.successful && event.detail.xhr.status < 300) {
      setProgress(100);
      form.reset();
      describeSelection();
    }
  });
})();

// The documents table is replaced by polling and by Reindex/Delete: htmx gives focus back to an element
// with the same id (the buttons have ids); when that element is gone (a deleted row), focus goes to the
// table's heading rather than being lost.
(() => {
  let focusWasInTable = false;
  document.addEventListener("htmx:beforeSwap", () => {
    const table = document.getElementById("documents");
    focusWasInTable = Boolean(table && table.contains(document.activeElement));
  });
  document.addEventListener("htmx:afterSettle", () => {
    if (!focusWasInTable) {
      return;
    }
    focusWasInTable = false;
    const active = document.activeElement;
    if (!active || active === document.body) {
      const heading = document.getElementById("documents-heading");
      if (heading) {
        heading.setAttribute("tabindex", "-1");
        heading.focus();
      }
    }
  });
})();
