#!/usr/bin/env python3
"""Drives a live agentkernel server through the published Python SDK (agentkernel-sdk),
asserting every answer: health, run, sandboxes, exec, files, stream, batch, errors.

Environment: AGENTKERNEL_URL (required), AGENTKERNEL_API_KEY (sent by the SDK as
"Authorization: Bearer KEY"). Exits non-zero, naming the failed step, on any mismatch.
"""
import base64
import os
import sys
import uuid

from agentkernel import AgentKernel, AgentKernelError, NotFoundError, ValidationError


def check(step, condition, detail=""):
    if not condition:
        sys.exit(f"sdk: FAILED {step}: {detail}")
    print(f"sdk: ok {step}")


def main(client):
    check("health", client.health() == "ok")
    backends = client.get_backends()
    check("get_backends", backends.default_backend == "docker"
          and backends.backends[0].usable, repr(backends))

    run = client.run(["echo", "hi"])
    check("run", run.output == "hi\n", repr(run.output))
    run = client.run(["sh", "-c", "echo out; exit 3"], fast=False)
    check("run fast=False, non-zero exit", run.output == "out\n", repr(run.output))

    name = f"sdk-{uuid.uuid4().hex[:8]}"
    info = client.create_sandbox(name)
    check("create_sandbox", info.name == name and info.status == "running"
          and info.backend == "docker", repr(info))
    try:
        got = client.get_sandbox(name)
        check("get_sandbox", got.status == "running" and got.memory_mb == 512, repr(got))
        names = [s.name for s in client.list_sandboxes()]
        check("list_sandboxes", name in names, repr(names))

        out = client.exec_in_sandbox(name, ["sh", "-c", "echo $FOO; pwd"],
                                     env=["FOO=bar"], workdir="/tmp")
        check("exec_in_sandbox with env and workdir", out.output == "bar\n/tmp\n",
              repr(out.output))

        client.write_file(name, "tmp/hello.txt", "hello world\n")
        read = client.read_file(name, "/tmp/hello.txt")
        check("write_file / read_file (tmpfs)", read.content == "hello world\n"
              and read.encoding == "utf8" and read.size == 12, repr(read))

        blob = bytes(range(256)) * 4
        client.write_file(name, "/root/blob.bin", base64.b64encode(blob).decode(),
                          encoding="base64")
        read = client.read_file(name, "root/blob.bin")
        check("binary file round trip", read.encoding == "base64"
              and base64.b64decode(read.content) == blob and read.size == len(blob),
              repr(read)[:200])

        written = client.write_files(name, {f"/tmp/many/{i}.txt": str(i) for i in range(100)})
        check("write_files (100 files)", written.written == 100, repr(written))
        check("read one of them", client.read_file(name, "/tmp/many/42.txt").content == "42")

        client.delete_file(name, "tmp/hello.txt")
        try:
            client.read_file(name, "tmp/hello.txt")
            check("deleted file is gone", False, "read succeeded")
        except NotFoundError:
            check("deleted file is gone", True)

        by_uuid = client.get_sandbox_by_uuid(got.uuid)
        check("get_sandbox_by_uuid", by_uuid.name == name, repr(by_uuid))
        check("extend_ttl", client.extend_ttl(name, by="1h") is None)

        detached = client.exec_detached(name, ["sh", "-c", "echo bg; echo err >&2; sleep 0.5"])
        check("exec_detached", detached.status == "running" and len(detached.id) == 16,
              repr(detached))
        import time
        for _ in range(50):
            status = client.detached_status(name, detached.id)
            if status.status != "running":
                break
            time.sleep(0.1)
        check("detached_status", status.status == "completed" and status.exit_code == 0,
              repr(status))
        check("detached_list", [d.id for d in client.detached_list(name)] == [detached.id])
        logs = client.detached_logs(name, detached.id)
        check("detached_logs", logs.stdout == "bg\n" and logs.stderr == "err\n", repr(logs))
        check("detached_logs stderr", client.detached_logs(name, detached.id,
              stream="stderr").stdout is None)
        sleeper = client.exec_detached(name, ["sleep", "600"])
        client.detached_kill(name, sleeper.id)
        time.sleep(0.3)
        check("detached_kill", client.detached_status(name, sleeper.id).status == "failed")

        logs = client.get_sandbox_logs(name)
        check("get_sandbox_logs", any(e.get("event") == "exec" for e in logs), repr(logs))

        client.exec_in_sandbox(name, ["sh", "-c", "echo snap > /root/snap.txt"])
        snap = f"{name}-snap"
        meta = client.take_snapshot(name, snapshot_name=snap)
        check("take_snapshot", meta.name == snap and meta.sandbox == name
              and meta.backend == "docker" and meta.memory_mb == 512, repr(meta))
        check("list_snapshots", [s.name for s in client.list_snapshots()] == [snap])
        check("get_snapshot", client.get_snapshot(snap).image_tag == meta.image_tag)
        client.remove_sandbox(name)
        restored = client.restore_snapshot(snap)
        check("restore_snapshot", restored.name == name and restored.status == "running",
              repr(restored))
        out = client.exec_in_sandbox(name, ["cat", "/root/snap.txt"])
        check("restored files", out.output == "snap\n", repr(out.output))
        client.remove_sandbox(name)
        client.delete_snapshot(snap)
        try:
            client.get_snapshot(snap)
            check("deleted snapshot is gone", False, "get succeeded")
        except NotFoundError:
            check("deleted snapshot is gone", True)
        timed = f"{name}-ttl"
        # The SDK's create_sandbox has no ttl: the same request, with one.
        client._request("POST", "/sandboxes", json={"name": timed, "ttl": "1h"})
        try:
            expires = client.extend_ttl(timed, by="2h")
            check("extend_ttl of a sandbox with a ttl", isinstance(expires, str)
                  and expires.endswith("Z"), repr(expires))
        finally:
            client.remove_sandbox(timed)
    finally:
        try:
            client.remove_sandbox(name)
        except NotFoundError:
            pass
    try:
        client.get_sandbox(name)
        check("removed sandbox is gone", False, "get succeeded")
    except NotFoundError as error:
        check("removed sandbox is gone", f"'{name}'" in str(error), str(error))

    events = list(client.run_stream(["sh", "-c", "echo one; echo two >&2"]))
    kinds = [e.type for e in events]
    check("run_stream events", kinds[0] == "started" and kinds[-1] == "done", repr(kinds))
    text = "".join(e.data["data"] for e in events if e.type == "output")
    check("run_stream output", sorted(text.splitlines()) == ["one", "two"], repr(text))
    check("run_stream exit code", events[-1].data.get("exit_code") == 0, repr(events[-1]))

    batch = client.batch_run([["echo", "1"], ["echo", "2"], ["sh", "-c", "exit 1"]])
    outputs = [r.output for r in batch.results]
    check("batch_run", outputs[:2] == ["1\n", "2\n"] and len(outputs) == 3, repr(outputs))

    try:
        client.run([])
        check("empty command is a ValidationError", False, "run succeeded")
    except ValidationError:
        check("empty command is a ValidationError", True)
    return 0


if __name__ == "__main__":
    url = os.environ.get("AGENTKERNEL_URL") or sys.exit("set AGENTKERNEL_URL")
    try:
        with AgentKernel(base_url=url, api_key=os.environ.get("AGENTKERNEL_API_KEY"),
                         timeout=120.0) as sdk:
            sys.exit(main(sdk))
    except AgentKernelError as error:
        sys.exit(f"sdk: FAILED with {type(error).__name__}: {error}")
