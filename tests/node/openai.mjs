// openai.mjs - the official openai client against `moestream serve` (started by tests/server.sh):
// models list, chat without and with streaming, a tool-call round trip (the model is made to call
// a tool through tool_choice, the result goes back as a tool message, the model answers), a
// streamed tool call, legacy completions, and a wrong API key.
// Usage: node openai.mjs BASE_URL API_KEY MODEL_ID
import OpenAI from 'openai';

const [baseURL, apiKey, modelId] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });
let checks = 0, failures = 0;
function check(cond, what, detail) {
  checks++;
  if (!cond) {
    failures++;
    console.error(`FAIL openai: ${what}${detail !== undefined ? ': ' + JSON.stringify(detail).slice(0, 600) : ''}`);
  }
}

const tools = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', description: 'City name' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
      required: ['city', 'unit'],
    },
  },
}];

async function main() {
  // models
  const models = await client.models.list();
  check(models.data.length === 1 && models.data[0].id === modelId, 'models.list', models.data);
  const one = await client.models.retrieve(modelId);
  check(one.id === modelId, 'models.retrieve', one);

  // chat, not streamed, then streamed: greedy, so the same text
  const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello.' }];
  // once first, so that the two compared below both resume from the same saved state (a fresh
  // prefill and a resumed one may differ in the last bits, which can flip a random model's routing)
  await client.chat.completions.create({ model: modelId, messages, max_tokens: 1, temperature: 0 });
  const r = await client.chat.completions.create({ model: modelId, messages, max_tokens: 16, temperature: 0, seed: 11 });
  const c0 = r.choices[0];
  check(r.object === 'chat.completion' && typeof c0.message.content === 'string', 'chat: a text answer', r);
  check(['stop', 'length'].includes(c0.finish_reason), 'chat: finish_reason', c0.finish_reason);
  check(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 16 &&
        r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, 'chat: usage', r.usage);

  const stream = await client.chat.completions.create({
    model: modelId, messages, max_tokens: 16, temperature: 0, seed: 11, stream: true, stream_options: { include_usage: true },
  });
  let text = '', finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      if (ch.delta?.content) text += ch.delta.content;
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  check(chunks >= 3, 'stream: several chunks', chunks);
  check(text === c0.message.content, 'stream: same text as without streaming (greedy)', { text, want: c0.message.content });
  check(finish === c0.finish_reason, 'stream: finish_reason', finish);
  check(usage && usage.completion_tokens === r.usage.completion_tokens, 'stream: usage in the last chunk', usage);
  check(usage && usage.prompt_tokens_details?.cached_tokens > 0, 'stream: the repeated prompt reused the context', usage);

  // the same seed gives the same sampled text
  const s1 = await client.chat.completions.create({ model: modelId, messages, max_tokens: 12, temperature: 1, seed: 42 });
  const s2 = await client.chat.completions.create({ model: modelId, messages, max_tokens: 12, temperature: 1, seed: 42 });
  check(s1.choices[0].message.content === s2.choices[0].message.content, 'seed: same seed, same text',
        [s1.choices[0].message.content, s2.choices[0].message.content]);

  // tool-call round trip
  const conv = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const t1 = await client.chat.completions.create({
    model: modelId, messages: conv, tools, tool_choice: { type: 'function', function: { name: 'get_weather' } },
    max_tokens: 64, seed: 7,
  });
  const m1 = t1.choices[0].message;
  check(t1.choices[0].finish_reason === 'tool_calls', 'tools: finish_reason tool_calls', t1.choices[0]);
  check(Array.isArray(m1.tool_calls) && m1.tool_calls.length === 1, 'tools: one tool call', m1);
  let args = null;
  if (m1.tool_calls?.length) {
    const tc = m1.tool_calls[0];
    check(tc.type === 'function' && tc.function.name === 'get_weather' && typeof tc.id === 'string', 'tools: the named function', tc);
    try { args = JSON.parse(tc.function.arguments); } catch (e) { args = null; }
    check(args && typeof args.city === 'string' && ['celsius', 'fahrenheit'].includes(args.unit),
          'tools: arguments are JSON with the required parameters of the right types', tc.function.arguments);
    conv.push(m1);
    conv.push({ role: 'tool', tool_call_id: tc.id, content: JSON.stringify({ city: 'Paris', temperature: 21, unit: 'celsius' }) });
    const t2 = await client.chat.completions.create({ model: modelId, messages: conv, tools, max_tokens: 24, seed: 7 });
    const m2 = t2.choices[0];
    check(typeof m2.message.content === 'string' || (m2.message.tool_calls?.length > 0), 'tools: a final answer', m2);
    check(['stop', 'length', 'tool_calls'].includes(m2.finish_reason), 'tools: final finish_reason', m2.finish_reason);
    check(t2.usage.prompt_tokens_details?.cached_tokens > 0, 'tools: the second turn reused the first turn\'s context', t2.usage);
  }

  // a streamed tool call the model must make (tool_choice "required")
  const ts = await client.chat.completions.create({
    model: modelId, messages: [{ role: 'user', content: 'Weather in Rome?' }], tools, tool_choice: 'required',
    max_tokens: 64, seed: 3, stream: true,
  });
  const calls = [];
  let tfinish = null;
  for await (const chunk of ts) {
    for (const ch of chunk.choices) {
      for (const d of ch.delta?.tool_calls ?? []) {
        calls[d.index] ??= { name: '', arguments: '' };
        if (d.function?.name) calls[d.index].name += d.function.name;
        if (d.function?.arguments) calls[d.index].arguments += d.function.arguments;
      }
      if (ch.finish_reason) tfinish = ch.finish_reason;
    }
  }
  check(calls.length === 1 && calls[0].name === 'get_weather', 'stream tools: one call', calls);
  check(tfinish === 'tool_calls', 'stream tools: finish_reason', tfinish);
  let sargs = null;
  try { sargs = JSON.parse(calls[0]?.arguments ?? ''); } catch (e) { sargs = null; }
  check(sargs && typeof sargs.city === 'string', 'stream tools: JSON arguments', calls[0]);

  // legacy completions
  const comp = await client.completions.create({ model: modelId, prompt: 'The quick brown fox', max_tokens: 8, temperature: 0 });
  check(comp.object === 'text_completion' && typeof comp.choices[0].text === 'string' && comp.usage.completion_tokens <= 8,
        'completions', comp);

  // errors come back as the client's error classes
  try {
    await client.chat.completions.create({ model: 'no-such-model', messages, max_tokens: 4 });
    check(false, 'unknown model should fail');
  } catch (e) {
    check(e instanceof OpenAI.NotFoundError && e.status === 404, 'unknown model: NotFoundError', { status: e.status, msg: e.message });
  }
  try {
    await new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 }).models.list();
    check(false, 'a wrong API key should fail');
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError && e.status === 401, 'wrong API key: AuthenticationError', { status: e.status });
  }
}

try {
  await main();
} catch (e) {
  failures++;
  console.error('FAIL openai: unexpected error:', e?.status ?? '', e?.message ?? e);
}
if (failures) {
  console.error(`openai: ${failures} of ${checks} checks FAILED`);
  process.exit(1);
}
console.log(`openai: ${checks} checks passed`);
