// The official OpenAI Node SDK's `chat.completions.runTools` against an OpenAI-compatible
// endpoint (gpt-oss-lb in tests/python/test_conformance.py): the model is asked for the
// weather in Paris with one function tool, `get_weather(location)`; the runner must call the
// tool, send its result back and finish with an answer.
//
//   node run_tools.mjs BASE_URL MODEL stream|json
//
// Prints one JSON line: {calls: [{name, arguments}], results: [...], content, finish_reasons,
// completions} and exits 0; it exits 1 (with the error on stderr) when the SDK throws. The
// caller judges the result, so a failure says what the client saw.
import OpenAI from "openai";

const [baseURL, model, mode] = process.argv.slice(2);
if (!baseURL || !model || !["stream", "json"].includes(mode)) {
  console.error("usage: node run_tools.mjs BASE_URL MODEL stream|json");
  process.exit(2);
}

const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });

const calls = [];
const results = [];
const getWeather = ({ location }) => {
  const result = JSON.stringify({ temperature: 19, unit: "celsius", condition: "sunny", location });
  results.push(result);
  return result;
};

const body = {
  model,
  messages: [{ role: "user", content: "What is the weather in Paris?" }],
  tools: [
    {
      type: "function",
      function: {
        name: "get_weather",
        description: "Get the current weather in a city.",
        parameters: {
          type: "object",
          properties: { location: { type: "string" } },
          required: ["location"],
        },
        function: getWeather,
        parse: JSON.parse,
      },
    },
  ],
  temperature: 0,
  seed: 7,
  max_tokens: 120,
  stream: mode === "stream",
};

try {
  const runner = client.chat.completions.runTools(body, { maxChatCompletions: 4 });
  runner.on("functionToolCall", (fn) => calls.push({ name: fn.name, arguments: fn.arguments }));
  const content = await runner.finalContent();
  const completions = runner.allChatCompletions();
  console.log(
    JSON.stringify({
      calls,
      results,
      content,
      finish_reasons: completions.map((c) => c.choices[0]?.finish_reason ?? null),
      completions: completions.length,
    }),
  );
} catch (e) {
  console.error(`runTools failed: ${e?.stack ?? e}`);
  process.exit(1);
}
