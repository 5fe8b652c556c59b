import { MODEL_PRESETS, initWeights, buildLlamaTrainGraph, buildAdamWGraph, Random } from './src/index.js';
import ort from 'onnxruntime-node';
import { mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
const config = MODEL_PRESETS.cloud;
const weights = initWeights(config, 1);
const B = 8,
  S = 128;
const graph = buildLlamaTrainGraph(config, weights, { batch: B, seq: S });
rmSync('/tmp/x', { recursive: true, force: true });
mkdirSync('/tmp/x');
const prof = process.argv[2] === 'prof';
const s = await ort.InferenceSession.create(graph.bytes, {
  intraOpNumThreads: 2,
  graphOptimizationLevel: 'all',
  enableProfiling: prof,
  profileFilePrefix: '/tmp/x/p',
});
const r = new Random(1);
const ids = BigInt64Array.from({ length: B * S }, () => BigInt(32 + r.integer(90)));
const feeds: Record<string, ort.Tensor> = {
  input_ids: new ort.Tensor('int64', ids, [B, S]),
  targets: new ort.Tensor('int64', ids, [B, S]),
  loss_weights: new ort.Tensor('float32', new Float32Array(B * S).fill(1), [B, S]),
};
for (const t of graph.trainables) feeds[t.name] = new ort.Tensor('float32', weights.get(t.name)!.data, t.shape);
await s.run(feeds);
let t0 = performance.now();
for (let i = 0; i < 3; i++) await s.run(feeds);
console.log('grad run ms', ((performance.now() - t0) / 3).toFixed(0));
const apply = await ort.InferenceSession.create(
  buildAdamWGraph(
    graph.trainables.map((x) => x.shape),
    { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.01 },
  ),
  { intraOpNumThreads: 2 },
);
const af: Record<string, ort.Tensor> = {
  inv_weight_sum: new ort.Tensor('float32', Float32Array.of(1), []),
  lr: new ort.Tensor('float32', Float32Array.of(1e-3), []),
  bc1: new ort.Tensor('float32', Float32Array.of(0.1), []),
  bc2: new ort.Tensor('float32', Float32Array.of(0.001), []),
  max_norm: new ort.Tensor('float32', Float32Array.of(1), []),
};
graph.trainables.forEach((t, i) => {
  const d = weights.get(t.name)!.data;
  for (const k of ['p', 'm', 'v', 'g']) af[`${k}.${i}`] = new ort.Tensor('float32', d, t.shape);
});
await apply.run(af);
t0 = performance.now();
for (let i = 0; i < 3; i++) await apply.run(af);
console.log('apply run ms', ((performance.now() - t0) / 3).toFixed(0));
if (prof) {
  s.endProfiling();
  const file = '/tmp/x/' + readdirSync('/tmp/x')[0];
  const events = JSON.parse(readFileSync(file, 'utf8')) as any[];
  const runs = events.filter((e) => e.name === 'model_run').length;
  const byOp = new Map<string, [number, number]>();
  for (const e of events)
    if (e.cat === 'Node' && e.name.endsWith('_kernel_time')) {
      const k = e.args.op_name;
      const v = byOp.get(k) ?? [0, 0];
      v[0] += e.dur;
      v[1]++;
      byOp.set(k, v);
    }
  console.log(
    [...byOp]
      .sort((a, b) => b[1][0] - a[1][0])
      .slice(0, 18)
      .map(([k, [d, n]]) => `${k}: ${(d / runs / 1000).toFixed(1)}ms x${(n / runs).toFixed(0)}`)
      .join('\n'),
  );
}
