// The Vercel AI SDK (`ai` with `@ai-sdk/openai` and `@ai-sdk/anthropic`) against the gateway:
// generateText and streamText with each provider.
import { generateText, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createAnthropic } from "@ai-sdk/anthropic";

const openai = createOpenAI({ baseURL: process.env.GATEWAY_URL + "/v1", apiKey: process.env.GATEWAY_KEY });
const anthropic = createAnthropic({ baseURL: process.env.GATEWAY_URL + "/v1", apiKey: process.env.GATEWAY_KEY });
const out = {};
for (const [name, model] of [["openai", openai("gpt-4.1-mini")], ["anthropic", anthropic("claude-haiku-4-5")]]) {
  const generated = await generateText({ model, prompt: "one two three", maxRetries: 0 });
  const streamed = streamText({ model, prompt: "four five", maxRetries: 0 });
  let text = "";
  for await (const delta of streamed.textStream) text += delta;
  out[name] = {
    generate: { text: generated.text, usage: generated.usage },
    stream: { text, usage: await streamed.usage },
  };
}
console.log(JSON.stringify(out));
