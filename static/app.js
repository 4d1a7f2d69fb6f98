// Small and optional: every form works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Copy buttons beside a shown-once key.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const input = document.getElementById(button.dataset.copy);
    const said = button.parentElement.querySelector(".copied");
    button.hidden = false;
    button.addEventListener("click", async () => {
      input.select();
      try {
        await navigator.clipboard.writeText(input.value);
        if (said) said.textContent = "Copied.";
      } catch {
        if (said) said.textContent = "Selected: press Ctrl+C to copy.";
      }
    });
  }

  // Ctrl+Enter (or Cmd+Enter) sends the message.
  const prompt = document.querySelector("#ask textarea[name=prompt]");
  if (prompt) {
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        prompt.form.requestSubmit();
      }
    });
  }

  // After a reply, show the conversation's own address, so reloading reopens it rather than resending.
  const chat = document.querySelector("section.chat[data-url]");
  if (chat && location.pathname !== chat.dataset.url) {
    history.replaceState(null, "", chat.dataset.url);
  }

  // Bring the newest message into view.
  const turns = document.querySelectorAll(".messages .turn");
  if (turns.length) turns[turns.length - 1].scrollIntoView({ block: "start" });
});

// Show the reply as it streams: the chat form is sent with fetch and read as server-sent events.
// Without JavaScript (or on any trouble before the stream starts) the form is simply posted.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("ask");
  if (!form || !window.fetch || !window.TextDecoder) return;
  form.addEventListener("submit", async (event) => {
    if (form.elements.reply_only && form.elements.reply_only.checked) return;
    if (!form.elements.prompt.value.trim()) return; // let the server say what is missing
    event.preventDefault();
    const prompt = form.elements.prompt.value;
    const send = form.querySelector("button[type=submit]");
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "text/event-stream" },
        credentials: "same-origin",
      });
    } catch {
      form.submit();
      return;
    }
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      if (type.startsWith("text/html")) {
        // The page with the error next to its field: shown as it came, never sent a second time.
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        document.title = page.title;
        document.body.replaceWith(document.adoptNode(page.body));
        const field = document.querySelector("[aria-invalid=true]") || document.getElementById("prompt");
        if (field) field.focus();
        return;
      }
      form.submit();
      return;
    }
    send.disabled = true;
    form.elements.prompt.value = "";
    const reply = showTurn(form, prompt);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const fail = (message) => {
      const bot = reply.parentElement;
      bot.insertAdjacentHTML("beforeend", '<p class="error" role="alert"></p>');
      bot.lastElementChild.textContent = message;
      bot.removeAttribute("aria-busy");
      form.elements.prompt.value = prompt;
      send.disabled = false;
    };
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const fields = {};
          for (const line of buffer.slice(0, end).split("\n")) {
            const colon = line.indexOf(": ");
            if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 2);
          }
          buffer = buffer.slice(end + 2);
          const data = JSON.parse(fields.data || "null");
          if (fields.event === "delta") reply.textContent += data.text;
          if (fields.event === "done") {
            location.assign(form.dataset.chat + "/" + encodeURIComponent(data.conversation_id));
            return;
          }
          if (fields.event === "error") return fail(data.message);
        }
      }
    } catch {
      // fall through: the connection broke or an event could not be read
    }
    fail("The reply stopped before it was complete. Your message is back in the box: send it again.");
  });
});

function showTurn(form, prompt) {
  let list = document.querySelector("ol.messages");
  if (!list) {
    list = document.createElement("ol");
    list.className = "messages";
    list.setAttribute("aria-label", "Messages, oldest first");
    form.before(list);
  }
  const turn = document.createElement("li");
  turn.className = "turn";
  turn.innerHTML =
    '<div class="msg you"><h2 class="who">You</h2><div class="text"></div></div>' +
    '<div class="msg bot" aria-live="polite" aria-busy="true"><h2 class="who">Assistant</h2><div class="text streaming"></div></div>';
  turn.querySelector(".you .text").textContent = prompt;
  list.append(turn);
  turn.scrollIntoView({ block: "start" });
  return turn.querySelector(".bot .text");
}
