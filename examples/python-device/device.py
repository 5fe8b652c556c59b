#!/usr/bin/env python3
"""A minimal Floe device in Python, written from docs/protocol.md alone.

It enrolls with a join token, connects over socket.io with its credential, says hello with a rank plan,
and answers every round_start with an update: the start adapter it was sent, its lora_B factors nudged
by a small deterministic step (a stand-in for local training; this example holds no model and no data).
It has nothing to correct, so a refused update (or an error event meanwhile, which is the answer to what it
sent) is logged and not resent; the round goes on without it. It leaves when a round_end says that the job
it took part in is no longer running, with exit code 0 when that job completed. It does not reconnect.

Dependencies (Debian): python3-socketio, python3-websocket, python3-msgpack. No Floe code.
"""

import argparse
import json
import math
import random
import struct
import sys
import threading
import urllib.error
import urllib.request
import zlib

import msgpack
import socketio

PROTOCOL_VERSION = 2
FRAME_VERSION = 1
HEADER = struct.Struct("<4sB3xII")  # magic, frame version, 3 reserved bytes, payload length, CRC-32
SELF_ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}


# ---- frames (docs/protocol.md, section 3)


def encode_frame(message):
    payload = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(b"FLOE", FRAME_VERSION, len(payload), zlib.crc32(payload) & 0xFFFFFFFF) + payload


def decode_frame(frame):
    if not isinstance(frame, (bytes, bytearray)) or len(frame) < HEADER.size:
        raise ValueError("not a frame")
    magic, version, length, crc = HEADER.unpack_from(frame)
    payload = bytes(frame[HEADER.size :])
    if magic != b"FLOE" or version != FRAME_VERSION or length != len(payload):
        raise ValueError("bad frame header")
    if zlib.crc32(payload) & 0xFFFFFFFF != crc:
        raise ValueError("bad frame checksum")
    return msgpack.unpackb(payload, raw=False)


# ---- adapters (docs/protocol.md, section 4: "Adapters on the wire")


def module_shape(architecture, kind):
    """[out, in] of a projection, from the job's base model architecture."""
    hidden = architecture["hiddenSize"]
    heads = architecture["numAttentionHeads"] * architecture["headDim"]
    kv = architecture["numKeyValueHeads"] * architecture["headDim"]
    inter = architecture["intermediateSize"]
    return {
        "q_proj": (heads, hidden),
        "k_proj": (kv, hidden),
        "v_proj": (kv, hidden),
        "o_proj": (hidden, heads),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }[kind]


def tensor_name(layer, kind, factor):
    block = "self_attn" if kind in SELF_ATTN else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{kind}.lora_{factor}.weight"


def f32_tensor(name, shape, values):
    return {"name": name, "dtype": "f32", "shape": list(shape), "data": struct.pack(f"<{len(values)}f", *values)}


def tensor_values(tensor):
    count = 1
    for n in tensor["shape"]:
        count *= n
    code = "f" if tensor["dtype"] == "f32" else "e"  # f16: IEEE half
    return list(struct.unpack(f"<{count}{code}", tensor["data"]))


def fresh_adapter(config, layers, seed):
    """PEFT's initialisation: A uniform in +-1/sqrt(in), B zero (used when round_start sends no adapter)."""
    rng = random.Random(seed)
    arch = config["baseModel"]["architecture"]
    rank = config["rank"]
    tensors = []
    for layer in layers if layers is not None else range(arch["numHiddenLayers"]):
        for kind in config["targetModules"]:
            out, inn = module_shape(arch, kind)
            bound = 1 / math.sqrt(inn)
            tensors.append(f32_tensor(tensor_name(layer, kind, "A"), (rank, inn), [rng.uniform(-bound, bound) for _ in range(rank * inn)]))
            tensors.append(f32_tensor(tensor_name(layer, kind, "B"), (out, rank), [0.0] * (out * rank)))
    return {"alpha": config["alpha"], "tensors": tensors}


def trained(adapter, alpha, round_index, seed):
    """The start adapter with every lora_B factor moved a small, deterministic step, at the job's alpha."""
    tensors = []
    for t in adapter["tensors"]:
        values = tensor_values(t)
        if t["name"].endswith(".lora_B.weight"):
            values = [v + 1e-3 * math.sin(0.1 * i + round_index + seed) for i, v in enumerate(values)]
        tensors.append(f32_tensor(t["name"], t["shape"], values))
    return {"alpha": alpha, "tensors": tensors}


# ---- HTTP (docs/protocol.md, section 1)


def enroll(server, join_token, profile):
    body = json.dumps({"joinToken": join_token, "protocolVersion": PROTOCOL_VERSION, "profile": profile}).encode()
    request = urllib.request.Request(f"{server}/v1/enroll", data=body, headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = json.loads(error.read() or b"{}")
        sys.exit(f"enrollment refused: {error.code} {detail.get('code')}: {detail.get('message')}")


def main():
    parser = argparse.ArgumentParser(description="A minimal Floe device (no model): enroll, join, send updates.")
    parser.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8080")
    parser.add_argument("--join-token", required=True)
    parser.add_argument("--rank", type=int, default=8, help="the largest rank this device trains")
    parser.add_argument("--modules", default="q_proj,v_proj", help="the job's target modules")
    parser.add_argument("--num-samples", type=int, default=100, help="local examples it claims to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    args = parser.parse_args()
    server = args.server.rstrip("/")
    profile = {"tier": "python", "memoryMiB": 1024, "computeGflops": 5, "uplinkMbps": 10, "downlinkMbps": 20, "roundBudgetSec": 60}
    plan = {"rank": args.rank, "targetModules": args.modules.split(",")}

    identity = enroll(server, args.join_token, profile)
    print(f"enrolled as {identity['clientId']}", flush=True)

    sio = socketio.Client(reconnection=False)
    done = threading.Event()
    outcome = {"status": None, "rounds": 0, "accepted": 0, "job": None}

    def send(event, message):
        sio.emit(event, encode_frame({"type": event, **message}))

    @sio.event
    def connect():
        send("hello", {"protocolVersion": PROTOCOL_VERSION, "profile": profile, "plan": plan})

    @sio.on("welcome")
    def on_welcome(frame):
        welcome = decode_frame(frame)
        print(f"welcome: client {welcome['clientId']}, frames up to {welcome['maxFrameBytes']} bytes", flush=True)

    @sio.on("round_start")
    def on_round_start(frame):
        start = decode_frame(frame)
        outcome["job"] = outcome["job"] or start["jobId"]
        config = start["config"]
        adapter = start["adapter"] or fresh_adapter(config, plan.get("layers"), args.seed)
        update_plan = {"rank": config["rank"], "targetModules": config["targetModules"]}
        if "layers" in plan:
            update_plan["layers"] = plan["layers"]
        send(
            "update",
            {
                "jobId": start["jobId"],
                "round": start["round"],
                "numSamples": args.num_samples,
                "plan": update_plan,
                "adapter": trained(adapter, config["alpha"], start["round"], args.seed),
                "metrics": {"loss": 1.0 / (start["round"] + 1)},
            },
        )
        print(f"round {start['round']} of {start['jobId']}: sent an update at rank {config['rank']}", flush=True)

    @sio.on("update_ack")
    def on_ack(frame):
        ack = decode_frame(frame)
        if ack["accepted"]:
            outcome["accepted"] += 1
            print(f"round {ack['round']}: update accepted", flush=True)
        else:
            print(f"round {ack['round']}: update refused: {ack['error']['code']}: {ack['error']['message']}", flush=True)

    @sio.on("round_end")
    def on_round_end(frame):
        end = decode_frame(frame)
        print(f"{end['jobId']} round {end['round']} {end['status']} ({end['accepted']} updates); job {end['jobStatus']}", flush=True)
        # the end of a job reaches every connected client: leave on the end of the job this device is in
        if end["jobId"] != outcome["job"]:
            return
        outcome["rounds"] += 1
        if end["jobStatus"] != "running":
            outcome["status"] = end["jobStatus"]
            done.set()

    @sio.on("error")
    def on_error(frame):
        error = decode_frame(frame)
        print(f"server error: {error['code']}: {error['message']}", flush=True)

    @sio.event
    def disconnect():
        done.set()

    sio.connect(server, headers={"Authorization": f"Bearer {identity['credential']}"}, transports=["websocket"])
    finished = done.wait(args.timeout)
    sio.disconnect()
    if not finished:
        sys.exit(f"no job ended within {args.timeout} s")
    print(f"job {outcome['status']}: {outcome['accepted']} updates accepted, {outcome['rounds']} round ends", flush=True)
    sys.exit(0 if outcome["status"] == "completed" else 1)


if __name__ == "__main__":
    main()
