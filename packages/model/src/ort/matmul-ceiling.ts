import ort from 'onnxruntime-node';
import { DataType, Graph } from '../onnx/graph.js';
import { Random } from '../random.js';

/**
 * GFLOP/s of ONNX Runtime on a chain of training-shaped matmuls [rows x k] x [k x n] x [n x k]:
 * the ceiling a training graph of those shapes could reach on this machine.
 */
export async function measureMatmulGflops(
  rows: number,
  k: number,
  n: number,
  threads: number,
  runs = 10,
): Promise<number> {
  const g = new Graph('matmul_ceiling');
  const random = new Random(1);
  let h = g.input('x', DataType.FLOAT, [rows, k]);
  const chain = 8;
  for (let i = 0; i < chain; i++) {
    const up = g.initializer(`up${i}`, random.normalArray(k * n, 0.05), [k, n]);
    const down = g.initializer(`down${i}`, random.normalArray(n * k, 0.05), [n, k]);
    h = g.op('MatMul', [g.op('MatMul', [h, up]), down]);
  }
  g.output(h, 'y', DataType.FLOAT, [rows, k]);
  const session = await ort.InferenceSession.create(g.toBytes(), {
    intraOpNumThreads: threads,
    graphOptimizationLevel: 'all',
  });
  const feeds = { x: new ort.Tensor('float32', random.normalArray(rows * k, 1), [rows, k]) };
  await session.run(feeds);
  const start = performance.now();
  for (let i = 0; i < runs; i++) await session.run(feeds);
  const seconds = (performance.now() - start) / 1000;
  await session.release();
  return (runs * chain * 2 * 2 * rows * k * n) / seconds / 1e9;
}
