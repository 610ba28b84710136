// The chat page (templates/chat.html): asks with fetch and streams the answer in as it is generated.
// Without this script the form posts and the page comes back with the whole answer.
// The model's text is only ever set as text (text nodes, textContent), never parsed as HTML.
"use strict";

(() => {
  const form = document.querySelector("[data-chat-form]");
  if (!form || !window.fetch || !window.TextDecoder || !window.ReadableStream) {
    return;
  }
  const textarea = form.querySelector("#question");
  const button = form.querySelector('button[type="submit"]');
  const chatField = form.querySelector('input[name="chat_id"]');
  const status = document.getElementById("chat-status");
  const live = document.getElementById("chat-live");
  const alerts = document.getElementById("chat-alerts");
  const conversation = document.getElementById("conversation");
  const csrf = document.body.dataset.csrfToken || "";
  // The citation markers of aperag.chat.citations: [2], [1][3], [1, 3].
  const MARKER = /\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]/g;
  let turns = Number(conversation.dataset.turns || "0");
  let busy = false;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function clearAlerts() {
    alerts.replaceChildren();
    textarea.removeAttribute("aria-invalid");
    textarea.setAttribute("aria-describedby", "question-help");
  }

  function showAlert(message) {
    const p = el("p", "alert", message);
    p.setAttribute("role", "alert");
    p.id = "chat-error";
    alerts.prepend(p);
    textarea.setAttribute("aria-describedby", "question-help chat-error");
  }

  function sourceItem(turnIndex, source, withExcerpt) {
    const li = el("li", "source");
    li.id = `turn-${turnIndex}-source-${source.n}`;
    li.append(el("span", "source-n", `[${source.n}]`), " ");
    const link = el("a", "", source.filename);
    link.href = source.href;
    li.append(link);
    if (source.chunk !== null && source.chunk !== undefined) {
      li.append(el("span", "source-chunk", `, chunk ${source.chunk}`));
    }
    if (withExcerpt && source.excerpt) {
      li.append(el("p", "source-excerpt", source.excerpt));
    }
    return li;
  }

  function showRetrieved(sources) {
    if (!sources || sources.length === 0) {
      return;
    }
    const section = el("section", "retrieved");
    const heading = el("h3", "", "Sources found for your question");
    heading.id = "retrieved-heading";
    section.setAttribute("aria-labelledby", heading.id);
    const list = el("ul", "sources");
    for (const source of sources) {
      list.append(sourceItem(0, source, true));
    }
    section.append(heading, list);
    alerts.append(section);
  }

  // The answer as text nodes, each marker of a cited source a link to its entry in the sources list.
  function renderAnswer(target, text, cited, turnIndex) {
    const known = new Set(cited.map((c) => c.n));
    target.replaceChildren();
    let last = 0;
    for (const match of text.matchAll(MARKER)) {
      const numbers = match[1].split(",").map((part) => Number.parseInt(part, 10));
      if (!numbers.some((n) => known.has(n))) {
        continue;
      }
      if (match.index > last) {
        target.append(text.slice(last, match.index));
      }
      for (const n of numbers) {
        if (known.has(n)) {
          const link = el("a", "cite", `[${n}]`);
          link.href = `#turn-${turnIndex}-source-${n}`;
          target.append(link);
        } else {
          target.append(`[${n}]`);
        }
      }
      last = match.index + match[0].length;
    }
    if (last < text.length) {
      target.append(text.slice(last));
    }
  }

  // Server-sent events from a fetch response, parsed as they arrive.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        return;
      }
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) {
            name = line.slice(6).trim();
          } else if (line.startsWith("data:")) {
            data += line.slice(5).replace(/^ /, "");
          }
        }
        if (data) {
          yield [name, JSON.parse(data)];
        }
      }
    }
  }

  async function refusal(response) {
    if (response.redirected && new URL(response.url).pathname.endsWith("/sign-in")) {
      return "Your session has ended: reload the page and sign in again, then ask again.";
    }
    if (response.status === 403) {
      return "This page has expired or did not come from this console. Reload the page and ask again.";
    }
    if ((response.headers.get("content-type") || "").startsWith("application/json")) {
      try {
        const body = await response.json();
        if (body && typeof body.detail === "string") {
          return body.detail;
        }
      } catch (_) {
        // not JSON after all: the generic message below
      }
    }
    return `The question could not be asked (HTTP ${response.status}). Try again.`;
  }

  function startTurn(index, question) {
    const item = el("li", "turn turn-pending");
    item.id = `turn-${index}`;
    const asked = el("div", "turn-question");
    asked.append(el("p", "speaker", "You asked"), el("p", "question-text", question));
    const answered = el("div", "turn-answer");
    answered.append(el("p", "speaker", "Answer"));
    item.append(asked, answered);
    conversation.append(item);
    const text = el("p", "answer");
    live.replaceChildren(text);
    return { item, answered, text };
  }

  function finishTurn(turn, index, done) {
    turn.item.classList.remove("turn-pending");
    turn.answered.append(turn.text); // out of the live region: the citations are not read out as news
    renderAnswer(turn.text, done.answer, done.citations, index);
    if (done.citations.length > 0) {
      const heading = el("h3", "sources-heading", "Sources");
      heading.id = `turn-${index}-sources`;
      const list = el("ul", "sources");
      list.setAttribute("aria-labelledby", heading.id);
      for (const source of done.citations) {
        list.append(sourceItem(index, source, false));
      }
      turn.answered.append(heading, list);
    }
    live.replaceChildren();
  }

  // A chat started on this page joins the chats list at once (the list is rendered by the server on load).
  function listChat(chatId, question) {
    const list = document.getElementById("chat-list");
    if (!list) return;
    const href = `${window.location.pathname}?chat=${encodeURIComponent(chatId)}`;
    for (const link of list.querySelectorAll("a")) {
      if (new URL(link.href).search === `?chat=${encodeURIComponent(chatId)}`) return;
    }
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = href;
    link.textContent = question.length > 90 ? `${question.slice(0, 89)}…` : question;
    link.setAttribute("aria-current", "page");
    item.append(link);
    list.prepend(item);
    list.hidden = false;
    document.getElementById("chats-none")?.remove();
  }

  function dropTurn(turn) {
    turn.item.remove();
    live.replaceChildren();
  }

  async function ask() {
    const question = textarea.value.trim();
    clearAlerts();
    if (!question) {
      showAlert("Enter a question.");
      textarea.setAttribute("aria-invalid", "true");
      textarea.focus();
      return;
    }
    busy = true;
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    status.textContent = "Searching the documents…";
    const index = turns + 1;
    const turn = startTurn(index, question);
    let sources = [];
    let finished = false;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: { Accept: "text/event-stream", "X-CSRF-Token": csrf },
        body: new URLSearchParams(new FormData(form)),
        credentials: "same-origin",
      });
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        dropTurn(turn);
        showAlert(await refusal(response));
        status.textContent = "";
        finished = true;
        return;
      }
      for await (const [name, data] of events(response)) {
        if (name === "sources") {
          chatField.value = data.chat_id;
          sources = data.sources;
          status.textContent = "Answering…";
        } else if (name === "delta") {
          turn.text.append(data.text);
        } else if (name === "done") {
          finishTurn(turn, index, data);
          turns = index;
          conversation.dataset.turns = String(turns);
          chatField.value = data.chat_id;
          window.history.replaceState(null, "", `${window.location.pathname}?chat=${encodeURIComponent(data.chat_id)}`);
          listChat(data.chat_id, question);
          const empty = document.getElementById("chat-empty");
          if (empty) {
            empty.remove();
            document.getElementById("conversation-heading").textContent = "Conversation";
          }
          textarea.value = "";
          const n = data.citations.length;
          status.textContent = n ? `Answered, citing ${n} source${n === 1 ? "" : "s"}.` : "Answered.";
          finished = true;
        } else if (name === "error") {
          dropTurn(turn);
          showAlert(data.message || data.detail);
          showRetrieved(sources);
          status.textContent = "";
          finished = true;
        }
      }
      if (!finished) {
        dropTurn(turn);
        finished = true;
        status.textContent = "";
        showAlert("The answer was cut off (the connection closed). Your question is still in the box: ask again.");
      }
    } catch (error) {
      dropTurn(turn);
      showAlert("The server could not be reached. Your question is still in the box: ask again.");
    } finally {
      busy = false;
      button.disabled = false;
      form.removeAttribute("aria-busy");
      if (!finished) {
        status.textContent = "";
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!busy) {
      ask();
    }
  });

  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
})();
