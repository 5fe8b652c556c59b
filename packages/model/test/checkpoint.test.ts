import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { float16BitsToFloat32, float32ToFloat16Bits, parseSafetensors, serializeSafetensors } from '@floe/shared';
import {
  ByteTokenizer,
  OrtLlama,
  Random,
  initLora,
  loadAdapter,
  loadCheckpoint,
  mergeLora,
  parameterCount,
  saveAdapter,
  saveCheckpoint,
} from '../src/index.js';
import { maxAbsDiff, randomIds, randomLora, randomWeights, tinyConfig } from './helpers.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'floe-ckpt-'));
  dirs.push(dir);
  return dir;
}
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('safetensors', () => {
  const random = new Random(1);
  const tensor = { name: 'x', shape: [3, 5], data: random.normalArray(15, 3) };

  it('round-trips F32 exactly, F16 and BF16 to their precision', () => {
    const f32 = parseSafetensors(serializeSafetensors([tensor], 'F32')).tensors.get('x')!;
    expect(f32.shape).toEqual([3, 5]);
    expect(f32.data).toEqual(tensor.data);

    const f16 = parseSafetensors(serializeSafetensors([tensor], 'F16')).tensors.get('x')!;
    expect(f16.data).toEqual(float16BitsToFloat32(float32ToFloat16Bits(tensor.data)));

    const bf16 = parseSafetensors(serializeSafetensors([tensor], 'BF16')).tensors.get('x')!;
    for (let i = 0; i < 15; i++) {
      expect(Math.abs(bf16.data[i]! - tensor.data[i]!)).toBeLessThanOrEqual(Math.abs(tensor.data[i]!) * 2 ** -8);
      expect(new Uint32Array(bf16.data.buffer)[i]! & 0xffff).toBe(0);
    }
  });

  it('writes the layout other tools read: u64 header length, JSON header, 8-byte aligned data', () => {
    const bytes = serializeSafetensors([tensor, { name: 'b', shape: [2], data: Float32Array.of(1, 2) }], 'F32', {
      step: '7',
    });
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + headerLength) % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))) as Record<string, unknown>;
    expect(header['x']).toEqual({ dtype: 'F32', shape: [3, 5], data_offsets: [0, 60] });
    expect(header['b']).toEqual({ dtype: 'F32', shape: [2], data_offsets: [60, 68] });
    expect(header['__metadata__']).toEqual({ format: 'pt', step: '7' });
  });

  it('refuses truncated files, bad headers and unsupported dtypes with a clear error', () => {
    const bytes = serializeSafetensors([tensor]);
    expect(() => parseSafetensors(bytes.subarray(0, 4))).toThrow(/shorter/);
    expect(() => parseSafetensors(bytes.subarray(0, bytes.length - 4))).toThrow(/offsets/);
    const header = new TextEncoder().encode(JSON.stringify({ y: { dtype: 'I8', shape: [1], data_offsets: [0, 1] } }));
    const file = new Uint8Array(8 + header.length + 1);
    new DataView(file.buffer).setBigUint64(0, BigInt(header.length), true);
    file.set(header, 8);
    expect(() => parseSafetensors(file)).toThrow(/I8 is not supported/);
  });
});

describe('checkpoints and adapters', () => {
  const config = tinyConfig({ num_key_value_heads: 2, tie_word_embeddings: true });
  const weights = randomWeights(config, 3);

  it('saves and loads a checkpoint identically, with a Hugging Face config', async () => {
    const dir = await tempDir();
    await saveCheckpoint(dir, { config, weights });
    const back = await loadCheckpoint(dir);
    expect(back.config).toEqual({ ...config, torch_dtype: 'float32' });
    expect([...back.weights.keys()]).toEqual([...weights.keys()]);
    for (const [name, t] of weights) expect(back.weights.get(name)!.data).toEqual(t.data);
    const json = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(json['hidden_size']).toBe(32);
    expect(json['num_key_value_heads']).toBe(2);
  });

  it('refuses a checkpoint whose tensors do not fit its config', async () => {
    const dir = await tempDir();
    await saveCheckpoint(dir, { config, weights });
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...config, hidden_size: 64 }));
    await expect(loadCheckpoint(dir)).rejects.toThrow(/shape/);
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ ...config, num_attention_heads: 3 }));
    await expect(loadCheckpoint(dir)).rejects.toThrow(/multiple of num_key_value_heads/);
  });

  it('saves an adapter in PEFT layout and loads it back', async () => {
    const dir = await tempDir();
    const adapter = initLora(config, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'down_proj'] }, 5);
    expect([...adapter.modules.values()].every((f) => f.B.every((x) => x === 0))).toBe(true);
    await saveAdapter(dir, adapter, 'edge-test');
    const cfg = JSON.parse(await readFile(path.join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg).toMatchObject({
      peft_type: 'LORA',
      r: 4,
      lora_alpha: 8,
      target_modules: ['q_proj', 'down_proj'],
      task_type: 'CAUSAL_LM',
    });
    const { adapter: back } = await loadAdapter(dir);
    expect(back.alpha).toBe(8);
    for (const [p, f] of adapter.modules) expect(back.modules.get(p)).toEqual(f);
  });

  it('a merged export gives the logits of base + runtime LoRA', async () => {
    const adapter = randomLora(config, 4, ['q_proj', 'v_proj', 'up_proj', 'down_proj'], 6);
    const dir = await tempDir();
    await saveCheckpoint(dir, { config, weights: mergeLora(config, weights, adapter) });
    const merged = await loadCheckpoint(dir);
    const ids = randomIds(new Random(7), 2, 12, 256);
    const runtime = await OrtLlama.create(config, weights, { loraModules: 'all' });
    const exported = await OrtLlama.create(merged.config, merged.weights);
    const base = await OrtLlama.create(config, weights);
    try {
      const a = (await runtime.forward(ids, { lora: adapter })).logits;
      const b = (await exported.forward(ids)).logits;
      expect(maxAbsDiff(a, b)).toBeLessThan(1e-4);
      expect(maxAbsDiff(a, (await base.forward(ids)).logits)).toBeGreaterThan(1e-2);
    } finally {
      await Promise.all([runtime.release(), exported.release(), base.release()]);
    }
  });

  it('counts parameters from the config', () => {
    // embed 259*32 + 2 layers * (2*32 norms + q 32*32 + k,v 2*16*32 + o 32*32 + 3 * 88*32) + final norm
    expect(parameterCount(config)).toBe(259 * 32 + 2 * (64 + 1024 + 1024 + 1024 + 3 * 88 * 32) + 32);
  });
});

describe('byte tokenizer', () => {
  const tok = new ByteTokenizer();
  it('round-trips any text through UTF-8 bytes and marks specials', () => {
    const text = 'Fellow citizens — 42 ∑ 🚀';
    const ids = tok.encode(text, { bos: true, eos: true });
    expect(ids[0]).toBe(256);
    expect(ids.at(-1)).toBe(257);
    expect(ids.slice(1, -1).every((id) => id < 256)).toBe(true);
    expect(tok.decode(ids)).toBe(text);
    expect(tok.decode([0xf0, 0x9f])).toBe('\ufffd');
  });
});
