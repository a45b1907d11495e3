// The JS `openai` package against the gateway: chat completion, streamed chat, Responses (plain
// and streamed). Prints one JSON object with what the client received.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.GATEWAY_URL + "/v1", apiKey: process.env.GATEWAY_KEY, maxRetries: 0 });
const messages = [{ role: "user", content: "say hello to the gateway" }];

const chat = await client.chat.completions.create({ model: "gpt-4o-mini", messages });

let streamed = "";
let streamUsage = null;
const stream = await client.chat.completions.create({
  model: "gpt-4o-mini", messages, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) streamUsage = chunk.usage;
}

const response = await client.responses.create({ model: "gpt-4.1-mini", input: "one two three" });

let responseStreamed = "";
let completed = null;
const events = await client.responses.create({
  model: "gpt-4.1-mini", input: "four five", instructions: "be brief", stream: true,
});
for await (const event of events) {
  if (event.type === "response.output_text.delta") responseStreamed += event.delta;
  if (event.type === "response.completed") completed = event.response;
}

console.log(JSON.stringify({
  chat: { text: chat.choices[0].message.content, usage: chat.usage },
  chat_stream: { text: streamed, usage: streamUsage },
  responses: { text: response.output_text, usage: response.usage },
  responses_stream: { text: responseStreamed, usage: completed?.usage ?? null },
}));
