/**
 * LoRA adapter math on plain typed arrays. Matrices are row-major f32; accumulation is f64.
 *
 * A LoRA module adapts a frozen weight W [out, in] by dW = (alpha / r) * B @ A, with
 * A [r, in] and B [out, r]. The server aggregates either the factors (fedavg, hetlora) or the
 * products dW (flexlora), and re-factorizes a product at any rank by truncated SVD.
 */
import { Matrix as MlMatrix, QrDecomposition, SingularValueDecomposition } from 'ml-matrix';
import { AdapterMathError } from '../errors.js';
import { Random } from '../random.js';

export interface Matrix {
  rows: number;
  cols: number;
  data: Float32Array;
}

/** The two factors of one LoRA module: A [rank, inFeatures], B [outFeatures, rank]. */
export interface LoraFactors {
  rank: number;
  inFeatures: number;
  outFeatures: number;
  A: Float32Array;
  B: Float32Array;
}

export function matrix(rows: number, cols: number, data: Float32Array = new Float32Array(rows * cols)): Matrix {
  if (data.length !== rows * cols) {
    throw new AdapterMathError(
      'shape_mismatch',
      `a ${String(rows)}x${String(cols)} matrix needs ${String(rows * cols)} elements, got ${String(data.length)}`,
    );
  }
  return { rows, cols, data };
}

export function loraFactors(A: Float32Array, B: Float32Array, rank: number): LoraFactors {
  if (!Number.isInteger(rank) || rank < 1 || A.length % rank !== 0 || B.length % rank !== 0) {
    throw new AdapterMathError(
      'shape_mismatch',
      `factors of ${String(A.length)} and ${String(B.length)} elements do not have rank ${String(rank)}`,
    );
  }
  return { rank, inFeatures: A.length / rank, outFeatures: B.length / rank, A, B };
}

function checkRank(rank: number): void {
  if (!Number.isInteger(rank) || rank < 1) {
    throw new AdapterMathError('invalid_argument', `rank must be a positive integer, got ${String(rank)}`);
  }
}

/** Zero-pads the factors up to `rank` (extra rows of A, extra columns of B): the product is unchanged. */
export function padRank(factors: LoraFactors, rank: number): LoraFactors {
  checkRank(rank);
  if (rank < factors.rank) {
    throw new AdapterMathError(
      'invalid_argument',
      `cannot pad rank ${String(factors.rank)} down to ${String(rank)}; use truncateRank`,
    );
  }
  return resizeRank(factors, rank);
}

/** Keeps the first `rank` components (rows of A, columns of B). */
export function truncateRank(factors: LoraFactors, rank: number): LoraFactors {
  checkRank(rank);
  if (rank > factors.rank) {
    throw new AdapterMathError(
      'invalid_argument',
      `cannot truncate rank ${String(factors.rank)} up to ${String(rank)}; use padRank`,
    );
  }
  return resizeRank(factors, rank);
}

function resizeRank(factors: LoraFactors, rank: number): LoraFactors {
  const { inFeatures, outFeatures } = factors;
  const kept = Math.min(rank, factors.rank);
  const A = new Float32Array(rank * inFeatures);
  A.set(factors.A.subarray(0, kept * inFeatures));
  const B = new Float32Array(outFeatures * rank);
  for (let row = 0; row < outFeatures; row++) {
    B.set(factors.B.subarray(row * factors.rank, row * factors.rank + kept), row * rank);
  }
  return { rank, inFeatures, outFeatures, A, B };
}

/** Weights divided by their sum; each must be finite and >= 0, and their sum > 0. */
export function normalizedWeights(weights: readonly number[]): number[] {
  let total = 0;
  for (const [k, weight] of weights.entries()) {
    if (!(Number.isFinite(weight) && weight >= 0)) {
      throw new AdapterMathError(
        'invalid_argument',
        `weight ${String(k)} is ${String(weight)}; weights must be finite and >= 0`,
      );
    }
    total += weight;
  }
  if (!(total > 0 && Number.isFinite(total))) throw new AdapterMathError('invalid_argument', 'the weights sum to zero');
  return weights.map((w) => w / total);
}

/** sum_k w_k x_k / sum_k w_k, elementwise; the weights are sample counts or any positive numbers. */
export function weightedMean(arrays: readonly Float32Array[], weights: readonly number[]): Float32Array {
  if (arrays.length === 0 || arrays.length !== weights.length) {
    throw new AdapterMathError(
      'invalid_argument',
      `weightedMean needs one weight per array and at least one array (got ${String(arrays.length)} arrays, ${String(weights.length)} weights)`,
    );
  }
  const length = (arrays[0] as Float32Array).length;
  for (const [k, array] of arrays.entries()) {
    if (array.length !== length) {
      throw new AdapterMathError(
        'shape_mismatch',
        `array ${String(k)} has ${String(array.length)} elements, array 0 has ${String(length)}`,
      );
    }
  }
  const shares = normalizedWeights(weights);
  const sum = new Float64Array(length);
  for (const [k, array] of arrays.entries()) {
    const w = shares[k] as number;
    for (let i = 0; i < length; i++) sum[i] = (sum[i] as number) + w * (array[i] as number);
  }
  return Float32Array.from(sum);
}

/** dW = (alpha / r) * B @ A, shape [outFeatures, inFeatures]. */
export function loraProduct(factors: LoraFactors, alpha: number): Matrix {
  const { rank, inFeatures, outFeatures, A, B } = factors;
  const scale = alpha / rank;
  const out = new Float32Array(outFeatures * inFeatures);
  const row = new Float64Array(inFeatures);
  for (let i = 0; i < outFeatures; i++) {
    row.fill(0);
    for (let k = 0; k < rank; k++) {
      const b = (B[i * rank + k] as number) * scale;
      if (b === 0) continue;
      const aOffset = k * inFeatures;
      for (let j = 0; j < inFeatures; j++) row[j] = (row[j] as number) + b * (A[aOffset + j] as number);
    }
    out.set(row, i * inFeatures);
  }
  return { rows: outFeatures, cols: inFeatures, data: out };
}

export interface Factorization {
  factors: LoraFactors;
  /** All singular values of dW, descending (the discarded tail tells the truncation error). */
  singularValues: Float64Array;
}

/**
 * The best rank-`rank` LoRA factors of dW (Eckart-Young): with dW = U S V^T,
 * B = U_r sqrt(S_r) c and A = sqrt(S_r) V_r^T c where c = sqrt(rank / alpha), so that
 * (alpha / rank) B A = U_r S_r V_r^T. Ranks beyond min(out, in) are zero-padded.
 */
export function factorize(dW: Matrix, rank: number, alpha: number): Factorization {
  checkFactorization(rank, alpha);
  const { rows, cols } = dW;
  const svd = new SingularValueDecomposition(MlMatrix.from1DArray(rows, cols, dW.data), { autoTranspose: true });
  return loraFromSvd(svd.leftSingularVectors, Float64Array.from(svd.diagonal), svd.rightSingularVectors, rank, alpha);
}

/**
 * `factorize` of a weighted sum of LoRA products, sum_k weights[k] (alpha / r_k) B_k A_k, without
 * forming it when the stacked rank R = sum r_k is below min(out, in): the sum is [w_k s_k B_k] [A_k],
 * and with thin QRs of both stacks (Q_B R_B and Q_A R_A) its SVD is that of the R x R core R_B R_A^T,
 * rotated back by Q_B and Q_A. O(R^2 (out + in) + R^3) instead of O(out in min(out, in)). Singular values
 * past R are zero. Falls back to the dense route when R is not smaller.
 */
export function factorizeSum(
  terms: readonly LoraFactors[],
  weights: readonly number[],
  rank: number,
  alpha: number,
): Factorization {
  checkFactorization(rank, alpha);
  const first = terms[0];
  if (!first || terms.length !== weights.length) {
    throw new AdapterMathError('invalid_argument', 'factorizeSum needs one weight per term, and at least one term');
  }
  if (weights.some((w) => !Number.isFinite(w)))
    throw new AdapterMathError('invalid_argument', 'weights must be finite');
  const { outFeatures: rows, inFeatures: cols } = first;
  if (terms.some((t) => t.outFeatures !== rows || t.inFeatures !== cols)) {
    throw new AdapterMathError('shape_mismatch', 'the terms of a sum must adapt the same shape');
  }
  const stacked = terms.reduce((n, t) => n + t.rank, 0);
  if (stacked >= Math.min(rows, cols)) {
    const dense = new Float64Array(rows * cols);
    terms.forEach((t, k) => {
      const product = loraProduct(t, alpha).data;
      const w = weights[k] as number;
      for (let i = 0; i < dense.length; i++) dense[i] = (dense[i] as number) + w * (product[i] as number);
    });
    return factorize(matrix(rows, cols, Float32Array.from(dense)), rank, alpha);
  }
  const B = new MlMatrix(rows, stacked);
  const At = new MlMatrix(cols, stacked);
  let offset = 0;
  terms.forEach((t, k) => {
    const scale = ((weights[k] as number) * alpha) / t.rank;
    for (let j = 0; j < t.rank; j++) {
      for (let i = 0; i < rows; i++) B.set(i, offset + j, scale * (t.B[i * t.rank + j] as number));
      for (let i = 0; i < cols; i++) At.set(i, offset + j, t.A[j * cols + i] as number);
    }
    offset += t.rank;
  });
  const qrB = new QrDecomposition(B);
  const qrA = new QrDecomposition(At);
  const core = qrB.upperTriangularMatrix.mmul(qrA.upperTriangularMatrix.transpose());
  const svd = new SingularValueDecomposition(core);
  const U = qrB.orthogonalMatrix.mmul(svd.leftSingularVectors);
  const V = qrA.orthogonalMatrix.mmul(svd.rightSingularVectors);
  const values = new Float64Array(Math.min(rows, cols));
  values.set(svd.diagonal.map((v) => Math.max(0, v)));
  return loraFromSvd(U, values, V, rank, alpha);
}

/**
 * C = A B for row-major f32 B [inner, cols] and A [rows, inner], or A^T B when `transposeA` (A given as
 * [inner, rows]); a fast kernel may stand in (ORT, a BLAS).
 */
export type MatMul = (
  a: Float32Array,
  rows: number,
  inner: number,
  b: Float32Array,
  cols: number,
  transposeA?: boolean,
) => Float32Array | Promise<Float32Array>;

/** The reference kernel: f64 accumulation, row by row. */
export const jsMatMul: MatMul = (a, rows, inner, b, cols, transposeA = false) => {
  const out = new Float32Array(rows * cols);
  const row = new Float64Array(cols);
  for (let i = 0; i < rows; i++) {
    row.fill(0);
    for (let k = 0; k < inner; k++) {
      const x = (transposeA ? a[k * rows + i] : a[i * inner + k]) as number;
      if (x === 0) continue;
      const offset = k * cols;
      for (let j = 0; j < cols; j++) row[j] = (row[j] as number) + x * (b[offset + j] as number);
    }
    out.set(row, i * cols);
  }
  return out;
};

/**
 * sum_k scales[k] B_k A_k over `terms` factor pairs of one rank, each term's factors laid end to end:
 * B [terms, rows, rank] and A [terms, rank, cols]. A native kernel transposes and multiplies in one go.
 */
export type StackedProduct = (
  B: Float32Array,
  A: Float32Array,
  scales: Float32Array,
  terms: number,
  rows: number,
  rank: number,
  cols: number,
) => Float32Array | Promise<Float32Array>;

/** Fast kernels for the heavy products of aggregation; JavaScript loops stand in for the absent ones. */
export interface Kernels {
  matmul?: MatMul;
  stackedProduct?: StackedProduct;
}

/**
 * sum_k weights[k] (alpha / r_k) B_k A_k as one product of stacked factors, Bt^T A: Bt [R, rows] stacks
 * each B_k^T scaled by its weight and alpha / r_k, A [R, cols] stacks the A_k, R = sum r_k. (Stacking the
 * transposes keeps every write in order: a round of 1,000 rank-8 clients stacks 8,000 rows.)
 */
export function stackedFactors(
  terms: readonly LoraFactors[],
  weights: readonly number[],
  alpha: number,
): { Bt: Float32Array; A: Float32Array; stacked: number } {
  const { outFeatures: rows, inFeatures: cols } = terms[0] as LoraFactors;
  const stacked = terms.reduce((n, t) => n + t.rank, 0);
  const Bt = new Float32Array(stacked * rows);
  const A = new Float32Array(stacked * cols);
  let offset = 0;
  terms.forEach((t, k) => {
    const scale = ((weights[k] as number) * alpha) / t.rank;
    const r = t.rank;
    for (let j = 0; j < r; j++) {
      const at = (offset + j) * rows;
      for (let i = 0; i < rows; i++) Bt[at + i] = scale * (t.B[i * r + j] as number);
    }
    A.set(t.A, offset * cols);
    offset += r;
  });
  return { Bt, A, stacked };
}

/**
 * `factorizeSum` for sums whose stacked rank reaches min(out, in) (a round of many clients): the sum is
 * formed as one product of the stacked factors by `matmul` (a native kernel does 1,000 rank-8 edge-small
 * updates in ~0.1 s where the JavaScript loop takes seconds), then factorized; when only a few leading
 * components are wanted (rank <= min(out, in) / 4), by randomized subspace iteration instead of a full SVD.
 * Below that stacked rank, the exact QR route of `factorizeSum`.
 */
/**
 * Buffers one caller reuses across the modules of an aggregate (a round of 1,000 clients stacks ~15 MB per
 * module; allocating it 28 times costs more in garbage collection than the product itself).
 */
export interface StackScratch {
  B?: Float32Array;
  A?: Float32Array;
}

function scratchOf(scratch: StackScratch, key: 'A' | 'B', length: number): Float32Array {
  let buffer = scratch[key];
  if (!buffer || buffer.length < length) scratch[key] = buffer = new Float32Array(length);
  // every element is written by the caller (padded factors included), so no clearing is needed
  return buffer.subarray(0, length);
}

export async function factorizeLargeSum(
  terms: readonly LoraFactors[],
  weights: readonly number[],
  rank: number,
  alpha: number,
  kernels: Kernels = {},
  scratch: StackScratch = {},
): Promise<Factorization> {
  const first = terms[0];
  if (!first) throw new AdapterMathError('invalid_argument', 'nothing to factorize: no terms');
  const { outFeatures: rows, inFeatures: cols } = first;
  const smaller = Math.min(rows, cols);
  if (terms.reduce((n, t) => n + t.rank, 0) < smaller) return factorizeSum(terms, weights, rank, alpha);
  checkFactorization(rank, alpha);
  if (terms.length !== weights.length || weights.some((w) => !Number.isFinite(w))) {
    throw new AdapterMathError('invalid_argument', 'factorizeLargeSum needs one finite weight per term');
  }
  if (terms.some((t) => t.outFeatures !== rows || t.inFeatures !== cols)) {
    throw new AdapterMathError('shape_mismatch', 'the terms of a sum must adapt the same shape');
  }
  const sum = await weightedProductSum(terms, weights, alpha, kernels, scratch);
  return factorizeDense(matrix(rows, cols, sum), rank, alpha, kernels);
}

/** The rank-`rank` factorization of a dense dW: randomized when rank is small against its shape. */
export async function factorizeDense(
  dense: Matrix,
  rank: number,
  alpha: number,
  kernels: Kernels = {},
): Promise<Factorization> {
  const smaller = Math.min(dense.rows, dense.cols);
  return 4 * rank <= smaller
    ? factorizeTop(dense, rank, alpha, kernels.matmul ?? jsMatMul)
    : factorize(dense, rank, alpha);
}

/**
 * sum_k weights[k] (alpha / r_k) B_k A_k as a dense [rows, cols] matrix, the factors stacked into one
 * product through `kernels` (terms of one shape).
 */
export async function weightedProductSum(
  terms: readonly LoraFactors[],
  weights: readonly number[],
  alpha: number,
  kernels: Kernels = {},
  scratch: StackScratch = {},
): Promise<Float32Array> {
  const { outFeatures: rows, inFeatures: cols } = terms[0] as LoraFactors;
  const matmul = kernels.matmul ?? jsMatMul;
  if (kernels.stackedProduct) {
    // one rank for all (zero-padded): the factors are copied end to end, no element-wise stacking in JavaScript
    const r = Math.max(...terms.map((t) => t.rank));
    const B = scratchOf(scratch, 'B', terms.length * rows * r);
    const A = scratchOf(scratch, 'A', terms.length * r * cols);
    terms.forEach((t, k) => {
      const padded = t.rank === r ? t : padRank(t, r);
      B.set(padded.B, k * rows * r);
      A.set(padded.A, k * r * cols);
    });
    const scales = Float32Array.from(terms, (t, k) => ((weights[k] as number) * alpha) / t.rank);
    return kernels.stackedProduct(B, A, scales, terms.length, rows, r, cols);
  }
  const { Bt, A, stacked } = stackedFactors(terms, weights, alpha);
  return matmul(Bt, rows, stacked, A, cols, true);
}

/**
 * The leading `rank` components of dW by randomized subspace iteration (Halko, Martinsson and Tropp):
 * a seeded Gaussian sketch of rank + 8 columns, three power iterations re-orthonormalized (Gram-Schmidt,
 * twice), then the SVD of the small projected matrix. The products with dW go through `matmul`.
 * Singular values past `rank + 8` are reported as zero.
 */
export async function factorizeTop(
  dW: Matrix,
  rank: number,
  alpha: number,
  matmul: MatMul = jsMatMul,
): Promise<Factorization> {
  checkFactorization(rank, alpha);
  const { rows, cols, data } = dW;
  const width = Math.min(rank + 8, rows, cols);
  const random = new Random(0x5eed);
  const transposed = new Float32Array(cols * rows);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) transposed[j * rows + i] = data[i * cols + j] as number;
  const omega = Float32Array.from({ length: cols * width }, () => random.normal());
  let Q = orthonormalColumns(await matmul(data, rows, cols, omega, width), rows, width);
  for (let q = 0; q < 3; q++) {
    const Z = orthonormalColumns(await matmul(transposed, cols, rows, Q, width), cols, width);
    Q = orthonormalColumns(await matmul(data, rows, cols, Z, width), rows, width);
  }
  // Q^T dW [width, cols]: (Q^T) given as Q [rows, width], transposed inside the kernel
  const projected = await matmul(Q, width, rows, data, cols, true);
  const small = new SingularValueDecomposition(MlMatrix.from1DArray(width, cols, projected), { autoTranspose: true });
  const U = MlMatrix.from1DArray(rows, width, Q).mmul(small.leftSingularVectors);
  const values = new Float64Array(Math.min(rows, cols));
  values.set(small.diagonal.slice(0, width).map((v) => Math.max(0, v)));
  return loraFromSvd(U, values, small.rightSingularVectors, rank, alpha);
}

/** The columns of `m` [rows, width] made orthonormal by modified Gram-Schmidt, run twice ("twice is enough"). */
function orthonormalColumns(m: Float32Array, rows: number, width: number): Float32Array {
  const q = Float64Array.from(m);
  for (let pass = 0; pass < 2; pass++) {
    for (let j = 0; j < width; j++) {
      for (let k = 0; k < j; k++) {
        let dot = 0;
        for (let i = 0; i < rows; i++) dot += (q[i * width + j] as number) * (q[i * width + k] as number);
        for (let i = 0; i < rows; i++)
          q[i * width + j] = (q[i * width + j] as number) - dot * (q[i * width + k] as number);
      }
      let norm = 0;
      for (let i = 0; i < rows; i++) norm += (q[i * width + j] as number) ** 2;
      norm = Math.sqrt(norm) || 1;
      for (let i = 0; i < rows; i++) q[i * width + j] = (q[i * width + j] as number) / norm;
    }
  }
  return Float32Array.from(q);
}

function checkFactorization(rank: number, alpha: number): void {
  checkRank(rank);
  if (!(alpha > 0 && Number.isFinite(alpha))) {
    throw new AdapterMathError('invalid_argument', `alpha must be finite and > 0, got ${String(alpha)}`);
  }
}

/** LoRA factors from dW = U diag(values) V^T; `values` descending, U and V with at least as many columns as non-zero values. */
function loraFromSvd(
  U: MlMatrix,
  singularValues: Float64Array,
  V: MlMatrix,
  rank: number,
  alpha: number,
): Factorization {
  const rows = U.rows;
  const cols = V.rows;
  const kept = Math.min(rank, singularValues.length, U.columns, V.columns);
  const c = Math.sqrt(rank / alpha);
  const A = new Float32Array(rank * cols);
  const B = new Float32Array(rows * rank);
  for (let k = 0; k < kept; k++) {
    const root = Math.sqrt(singularValues[k] as number) * c;
    for (let i = 0; i < rows; i++) B[i * rank + k] = U.get(i, k) * root;
    for (let j = 0; j < cols; j++) A[k * cols + j] = V.get(j, k) * root;
  }
  return { factors: { rank, inFeatures: cols, outFeatures: rows, A, B }, singularValues };
}

/**
 * ||(alpha / r) B A||_F without forming the product: ||BA||_F^2 = tr((B^T B)(A A^T)), two r x r Gram
 * matrices, r^2 (in + out) work instead of r in out.
 */
export function loraProductNorm(factors: LoraFactors, alpha: number): number {
  const { rank: r, inFeatures, outFeatures, A, B } = factors;
  const gramA = new Float64Array(r * r);
  const gramB = new Float64Array(r * r);
  for (let i = 0; i < r; i++) {
    for (let j = i; j < r; j++) {
      let a = 0;
      for (let k = 0; k < inFeatures; k++) a += (A[i * inFeatures + k] as number) * (A[j * inFeatures + k] as number);
      let b = 0;
      for (let k = 0; k < outFeatures; k++) b += (B[k * r + i] as number) * (B[k * r + j] as number);
      gramA[i * r + j] = gramA[j * r + i] = a;
      gramB[i * r + j] = gramB[j * r + i] = b;
    }
  }
  let trace = 0;
  for (let i = 0; i < r * r; i++) trace += (gramA[i] as number) * (gramB[i] as number);
  return (alpha / r) * Math.sqrt(Math.max(0, trace));
}

/**
 * ||(alpha / r) B A - (alpha / r0) B0 A0||_F: how far an update moved a module from where it started.
 * The difference is itself a product, [s B, -s0 B0] [A; A0], so loraProductNorm's Gram route applies.
 */
export function loraDeltaNorm(update: LoraFactors, start: LoraFactors | undefined, alpha: number): number {
  if (!start) return loraProductNorm(update, alpha);
  const { inFeatures, outFeatures } = update;
  if (start.inFeatures !== inFeatures || start.outFeatures !== outFeatures) {
    throw new AdapterMathError('shape_mismatch', 'an update and its start must adapt the same shape');
  }
  const rank = update.rank + start.rank;
  const [s, s0] = [alpha / update.rank, alpha / start.rank];
  const B = new Float32Array(outFeatures * rank);
  for (let o = 0; o < outFeatures; o++) {
    for (let j = 0; j < update.rank; j++) B[o * rank + j] = s * (update.B[o * update.rank + j] as number);
    for (let j = 0; j < start.rank; j++) B[o * rank + update.rank + j] = -s0 * (start.B[o * start.rank + j] as number);
  }
  const A = new Float32Array(rank * inFeatures);
  A.set(update.A, 0);
  A.set(start.A, update.rank * inFeatures);
  return loraProductNorm({ rank, inFeatures, outFeatures, A, B }, rank);
}

export function frobeniusNorm(values: Float32Array): number {
  let sum = 0;
  for (const v of values) sum += v * v;
  return Math.sqrt(sum);
}

/** ||approx - exact||_F / ||exact||_F (absolute error when exact is zero). */
export function relativeFrobeniusError(approx: Float32Array, exact: Float32Array): number {
  if (approx.length !== exact.length) {
    throw new AdapterMathError(
      'shape_mismatch',
      `cannot compare ${String(approx.length)} with ${String(exact.length)} elements`,
    );
  }
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < exact.length; i++) {
    const e = exact[i] as number;
    const d = (approx[i] as number) - e;
    diff += d * d;
    norm += e * e;
  }
  return norm === 0 ? Math.sqrt(diff) : Math.sqrt(diff / norm);
}
