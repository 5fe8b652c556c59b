/**
 * A small builder for ONNX graphs: each call emits one node and returns the name of its output, so
 * graph code reads like the math it encodes. Serialization goes through onnx-proto (the ONNX
 * protobuf schema compiled by protobufjs).
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type Onnx = typeof onnxProto.onnx;
export type NodeProto = InstanceType<Onnx['NodeProto']>;

export const OPSET = 17;
export const IR_VERSION = 8;
export const DataType = onnx.TensorProto.DataType;

export type Dim = number | string;
export type AttributeValue = number | number[] | string | { floats: number[] } | { float: number };

export interface ValueInfo {
  name: string;
  elemType: number;
  dims: Dim[];
}

export class Graph {
  readonly nodes: NodeProto[] = [];
  readonly initializers: InstanceType<Onnx['TensorProto']>[] = [];
  readonly inputs: ValueInfo[] = [];
  readonly outputs: ValueInfo[] = [];
  private counter = 0;
  private readonly constants = new Map<string, string>();
  private readonly domains = new Set<string>();

  constructor(readonly name: string) {}

  /** A fresh value name with a readable prefix. */
  fresh(prefix: string): string {
    return `${prefix}__${this.counter++}`;
  }

  input(name: string, elemType: number, dims: Dim[]): string {
    this.inputs.push({ name, elemType, dims });
    return name;
  }

  /** Declares `value` a graph output under `name`; name the producing op's output instead where a copy matters. */
  output(value: string, name: string, elemType: number, dims: Dim[]): void {
    if (value !== name) this.op('Identity', [value], {}, name);
    this.outputs.push({ name, elemType, dims });
  }

  /** A named f32 initializer (weights). */
  initializer(name: string, data: Float32Array, dims: number[]): string {
    this.initializers.push(
      onnx.TensorProto.create({
        name,
        dataType: DataType.FLOAT,
        dims,
        rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      }),
    );
    return name;
  }

  /** An f32 constant, deduplicated by value. */
  constF32(values: number[], dims: number[] = values.length === 1 ? [] : [values.length]): string {
    return this.constant('f32', values, dims, () => {
      const data = Float32Array.from(values);
      return { dataType: DataType.FLOAT, rawData: new Uint8Array(data.buffer) };
    });
  }

  /** An int64 constant, deduplicated by value (shapes, axes, indices). */
  constI64(values: number[], dims: number[] = values.length === 1 ? [] : [values.length]): string {
    return this.constant('i64', values, dims, () => {
      const data = BigInt64Array.from(values.map(BigInt));
      return { dataType: DataType.INT64, rawData: new Uint8Array(data.buffer) };
    });
  }

  private constant(
    kind: string,
    values: number[],
    dims: number[],
    make: () => { dataType: number; rawData: Uint8Array },
  ): string {
    const key = `${kind}:${dims.join('x')}:${values.join(',')}`;
    const existing = this.constants.get(key);
    if (existing) return existing;
    const name = this.fresh(`const_${kind}`);
    this.initializers.push(onnx.TensorProto.create({ name, dims, ...make() }));
    this.constants.set(key, name);
    return name;
  }

  /** Emits a node with one output and returns the output's name. */
  op(opType: string, inputs: string[], attributes: Record<string, AttributeValue> = {}, output?: string): string {
    const name = output ?? this.fresh(opType.toLowerCase());
    this.opMulti(opType, inputs, [name], attributes);
    return name;
  }

  /** Emits a node with several outputs; `domain` selects an operator set such as `com.microsoft`. */
  opMulti(
    opType: string,
    inputs: string[],
    outputs: string[],
    attributes: Record<string, AttributeValue> = {},
    domain = '',
  ): string[] {
    if (domain !== '') this.domains.add(domain);
    this.nodes.push(
      onnx.NodeProto.create({
        opType,
        domain,
        name: this.fresh(`n_${opType}`),
        input: inputs,
        output: outputs,
        attribute: Object.entries(attributes).map(([key, value]) => attribute(key, value)),
      }),
    );
    return outputs;
  }

  /** The serialized ModelProto. */
  toBytes(): Uint8Array {
    const valueInfo = (v: ValueInfo) =>
      onnx.ValueInfoProto.create({
        name: v.name,
        type: {
          tensorType: {
            elemType: v.elemType,
            shape: { dim: v.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
          },
        },
      });
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      producerName: 'floe-ts',
      opsetImport: [{ domain: '', version: OPSET }, ...[...this.domains].map((domain) => ({ domain, version: 1 }))],
      graph: onnx.GraphProto.create({
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs.map(valueInfo),
        output: this.outputs.map(valueInfo),
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function attribute(name: string, value: AttributeValue) {
  const { AttributeType } = onnx.AttributeProto;
  if (typeof value === 'number') {
    return Number.isInteger(value)
      ? { name, type: AttributeType.INT, i: value }
      : { name, type: AttributeType.FLOAT, f: value };
  }
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value };
  if ('floats' in value) return { name, type: AttributeType.FLOATS, floats: value.floats };
  return { name, type: AttributeType.FLOAT, f: value.float };
}
