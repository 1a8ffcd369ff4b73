// The official openai npm package against a live llmbrick server's OpenAI API.
// Usage: node sdk_client.mjs <base URL, e.g. http://127.0.0.1:8000/v1>
// Prints one JSON object: what a streaming call, a whole answer and a failing stream gave.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-unused", maxRetries: 0 });
const messages = [{ role: "user", content: "hello from node" }];

const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
const chunks = [];
for await (const chunk of stream) chunks.push(chunk);
const answered = chunks.filter((chunk) => chunk.choices.length > 0);

const whole = await client.chat.completions.create({ model: "default", messages });

let failure = null;
try {
  for await (const chunk of await client.chat.completions.create({
    model: "fail",
    messages,
    stream: true,
  })) {
    void chunk;
  }
} catch (error) {
  failure = { name: error.constructor.name, isAPIError: error instanceof OpenAI.APIError,
              message: error.message, code: error.code };
}

console.log(JSON.stringify({
  stream: {
    ids: [...new Set(chunks.map((chunk) => chunk.id))],
    model: chunks[0].model,
    role: answered[0].choices[0].delta.role,
    text: answered.map((chunk) => chunk.choices[0].delta.content ?? "").join(""),
    finish: answered.at(-1).choices[0].finish_reason,
    usage: chunks.at(-1).usage,
  },
  whole: {
    object: whole.object,
    content: whole.choices[0].message.content,
    finish: whole.choices[0].finish_reason,
  },
  failure,
}));
