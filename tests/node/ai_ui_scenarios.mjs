// The scenarios the AI SDK's own chat client runs against a live llmbrick gateway's UI
// message stream route: the Chat logic useChat runs on (AbstractChat), the
// DefaultChatTransport that fetches and parses the stream, and the SDK's tool helpers,
// all unmodified. A plain ES module with no Node APIs: ai_ui_chat.mjs runs it in Node,
// tests/browser/test_ai_sdk.py in Chromium as well.
import {
  AbstractChat,
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithToolCalls,
} from "ai";

// The state a framework binding keeps (useChat keeps it in React state); plain here.
class PlainState {
  constructor(onChange) {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
    this.onChange = onChange;
  }
  pushMessage(message) {
    this.messages = [...this.messages, message];
    this.onChange(this.messages);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
    this.onChange(this.messages);
  }
  snapshot(value) {
    return structuredClone(value);
  }
}

class Chat extends AbstractChat {
  constructor({ onChange = () => {}, ...options }) {
    super({ ...options, state: new PlainState((messages) => onChange(messages)) });
  }
}

function summary(chat, extra = {}) {
  return {
    status: chat.status,
    error: chat.error ? chat.error.message : null,
    messages: chat.messages.map(({ id, role, parts }) => ({ id, role, parts })),
    ...extra,
  };
}

/**
 * The scenarios against the UI message stream route at `api`, by name; each resolves to
 * what the chat held at its end (JSON-serialisable).
 */
export function scenarios(api) {
  const transport = (flow) => new DefaultChatTransport({ api, body: flow ? { flow } : undefined });
  return {
    // Text streams into one assistant message.
    async text() {
      const chat = new Chat({ transport: transport() });
      await chat.sendMessage({ text: "hello from the sdk" });
      await chat.sendMessage({ text: "second turn" });
      return summary(chat);
    },

    // A flow failing mid-stream: the SDK's error state, with the server's errorText.
    async failure() {
      const errors = [];
      const chat = new Chat({
        transport: transport("fail"),
        onError: (error) => errors.push(error.message),
      });
      await chat.sendMessage({ text: "go" });
      return summary(chat, { onError: errors });
    },

    // A request refused before any stream (unknown flow): the SDK reports the body.
    async refused() {
      const chat = new Chat({ transport: transport("no-such-flow") });
      await chat.sendMessage({ text: "anyone there?" });
      return summary(chat);
    },

    // stop() while the flow runs: the fetch is aborted, the server cancels the flow.
    async stop(text = "stop from the sdk") {
      let streaming;
      const started = new Promise((resolve) => { streaming = resolve; });
      const chat = new Chat({
        transport: transport("forever"),
        onChange: (messages) => {
          const last = messages[messages.length - 1];
          const said = last && last.role === "assistant"
            && last.parts.some((part) => part.type === "text" && part.text);
          if (said) streaming();
        },
      });
      const sent = chat.sendMessage({ text });
      await started;
      await chat.stop();
      await sent;
      return summary(chat);
    },

    // A page reloads mid-answer: its chat is stopped (the connection goes away) and a new
    // chat with the same id calls resumeStream(), as useChat({resume: true}) does on mount.
    // The app asks for the grace policy, so the flow runs on; `release` lets it finish.
    async resume(release, text = "resume from the sdk") {
      const kept = () => new DefaultChatTransport({
        api,
        body: { flow: "paced" },
        headers: { "llmbrick-on-disconnect": "grace" },
      });
      let streaming;
      const started = new Promise((resolve) => { streaming = resolve; });
      const before = new Chat({
        transport: kept(),
        onChange: (messages) => {
          const last = messages[messages.length - 1];
          if (last && last.role === "assistant" && last.parts.some((p) => p.text)) streaming();
        },
      });
      const sent = before.sendMessage({ text });
      await started;
      await before.stop();
      await sent;
      const after = new Chat({ id: before.id, transport: kept() });
      const resumed = after.resumeStream();
      const released = await fetch(`${release}/${encodeURIComponent(text)}`, { method: "POST" });
      await resumed;
      return summary(after, { before: summary(before), released: released.status });
    },

    // A client-side tool: the flow asks, the page answers, the SDK resubmits by itself.
    async tools() {
      const calls = [];
      const chat = new Chat({
        transport: transport("weather"),
        sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
        onToolCall: ({ toolCall }) => {
          const { toolName, toolCallId, input } = toolCall;
          calls.push({ toolName, toolCallId, input });
          // Not awaited: the SDK runs it after the chunk that asked (awaiting would deadlock).
          chat.addToolOutput({ tool: toolName, toolCallId, output: { celsius: 21 } });
        },
      });
      await chat.sendMessage({ text: "weather in Paris?" });
      return summary(chat, { calls });
    },

    // meta and custom events arrive as data parts.
    async data() {
      const seen = [];
      const chat = new Chat({ transport: transport("notes"), onData: (part) => seen.push(part.type) });
      await chat.sendMessage({ text: "notes please" });
      return summary(chat, { onData: seen });
    },
  };
}
