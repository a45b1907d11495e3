// The JS `@anthropic-ai/sdk` package against the gateway: messages.create and messages.stream.
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({ baseURL: process.env.GATEWAY_URL, apiKey: process.env.GATEWAY_KEY, maxRetries: 0 });
const request = { model: "claude-haiku-4-5", max_tokens: 100, messages: [{ role: "user", content: "hello there gateway" }] };

const message = await client.messages.create(request);
const stream = client.messages.stream({ ...request, system: "be brief" });
let streamed = "";
stream.on("text", (text) => { streamed += text; });
const final = await stream.finalMessage();

console.log(JSON.stringify({
  create: { text: message.content[0].text, usage: message.usage },
  stream: { text: streamed, usage: final.usage },
}));
