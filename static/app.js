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
