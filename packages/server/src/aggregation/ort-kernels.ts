/**
 * The heavy products of large flexlora rounds on ONNX Runtime's CPU kernels (MLAS), one-op graphs with
 * symbolic shapes. A round of 1,000 rank-8 edge-small updates stacks 8,000 factor columns per module: ORT
 * transposes, scales and multiplies them in ~5 ms per module where JavaScript loops take ~1 s.
 */
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import type { Kernels } from '@floe/shared';

const { onnx } = onnxProto;
const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT = onnx.AttributeProto.AttributeType.INT;
const INTS = onnx.AttributeProto.AttributeType.INTS;

function value(name: string, dims: string[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: { tensorType: { elemType: FLOAT, shape: { dim: dims.map((dimParam) => ({ dimParam })) } } },
  });
}

function model(name: string, graph: Omit<onnxProto.onnx.IGraphProto, 'name'>): Uint8Array {
  return onnx.ModelProto.encode(
    onnx.ModelProto.create({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      producerName: 'floe-server',
      graph: { name, ...graph },
    }),
  ).finish();
}

/** C = A B, or A^T B (Gemm's transA: the transpose happens inside the kernel). */
function gemmGraph(transposeA: boolean): Uint8Array {
  return model('gemm', {
    node: [
      {
        opType: 'Gemm',
        input: ['a', 'b'],
        output: ['c'],
        attribute: [{ name: 'transA', type: INT, i: transposeA ? 1 : 0 }],
      },
    ],
    input: [value('a', transposeA ? ['inner', 'rows'] : ['rows', 'inner']), value('b', ['inner', 'cols'])],
    output: [value('c', ['rows', 'cols'])],
  });
}

/** sum_k s_k B_k A_k: B [K, rows, r] scaled, transposed to [rows, K, r], reshaped to [rows, K r], times A [K r, cols]. */
function stackedGraph(): Uint8Array {
  return model('stacked_product', {
    node: [
      { opType: 'Mul', input: ['b', 's'], output: ['scaled'] },
      {
        opType: 'Transpose',
        input: ['scaled'],
        output: ['rows_first'],
        attribute: [{ name: 'perm', type: INTS, ints: [1, 0, 2] }],
      },
      { opType: 'Reshape', input: ['rows_first', 'flat'], output: ['stacked'] },
      { opType: 'MatMul', input: ['stacked', 'a'], output: ['c'] },
    ],
    initializer: [
      onnx.TensorProto.create({
        name: 'flat',
        dataType: onnx.TensorProto.DataType.INT64,
        dims: [2],
        int64Data: [0, -1],
      }),
    ],
    input: [
      value('b', ['terms', 'rows', 'rank']),
      value('s', ['terms', 'one', 'one2']),
      value('a', ['stacked', 'cols']),
    ],
    output: [value('c', ['rows', 'cols'])],
  });
}

/** ORT sessions for every kernel, `threads` intra-op threads each. */
export async function ortKernels(threads = 1): Promise<Required<Kernels>> {
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1 };
  const [plain, transposed, stacked] = await Promise.all([
    ort.InferenceSession.create(gemmGraph(false), options),
    ort.InferenceSession.create(gemmGraph(true), options),
    ort.InferenceSession.create(stackedGraph(), options),
  ]);
  const output = (result: ort.InferenceSession.ReturnType) => (result['c'] as ort.Tensor).data as Float32Array;
  return {
    matmul: async (a, rows, inner, b, cols, transposeA = false) =>
      output(
        await (transposeA ? transposed : plain).run({
          a: new ort.Tensor('float32', a, transposeA ? [inner, rows] : [rows, inner]),
          b: new ort.Tensor('float32', b, [inner, cols]),
        }),
      ),
    stackedProduct: async (B, A, scales, terms, rows, rank, cols) =>
      output(
        await stacked.run({
          b: new ort.Tensor('float32', B, [terms, rows, rank]),
          s: new ort.Tensor('float32', scales, [terms, 1, 1]),
          a: new ort.Tensor('float32', A, [terms * rank, cols]),
        }),
      ),
  };
}
