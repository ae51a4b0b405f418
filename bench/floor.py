"""The floor under trimta's reception: what the machine gives a trio SMTP responder that does nothing.

Runs a minimal SMTP responder on trio (canned replies, DATA read up to CRLF.CRLF, no
parsing, nothing stored, no fsync) against the same `smtp-source -s 20 -l 2048` as
`bench/reception.py`, and prints messages per second and CPU seconds per 1,000
messages. Nothing trimta could do costs less on this machine, so the figure tells how
much of trimta's cost is its own and how much is Python, trio and the kernel's loopback
TCP here; it also shows how fast a machine runs Python before comparing its
`bench/reception.py` ratios with another machine's (docs/performance.md).

    .venv/bin/python bench/floor.py                      # one process
    .venv/bin/python bench/floor.py --processes 2        # two, on SO_REUSEPORT sockets
    .venv/bin/python bench/floor.py --thread-round-trip  # + a thread hand-off per message

`--thread-round-trip trio` adds one `trio.to_thread.run_sync` per message (as a spool
commit per message would), `--thread-round-trip dedicated` one round trip through a
thread of its own fed by a `queue.SimpleQueue` (`trimta.adapters.threads`).
"""

from __future__ import annotations

import argparse
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchError, free_port, machine_summary, run_smtp_source, tree_cpu_seconds, wait_for_port

HOST = "127.0.0.1"


# --- the responder (runs in its own processes) -----------------------------------------


def serve(port: int, round_trip: str | None) -> None:
    import trio

    async def main() -> None:
        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((HOST, port))
        listening.listen(1000)
        listening.setblocking(False)
        hand_off = await _hand_off(round_trip)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    sock, _ = listening.accept()
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(listening)
                    continue
                nursery.start_soon(_session, sock, hand_off)

    trio.run(main)


async def _hand_off(round_trip: str | None):  # noqa: ANN202 (a coroutine function or None)
    import trio

    if round_trip == "trio":
        async def via_trio() -> None:
            await trio.to_thread.run_sync(lambda: None)
        return via_trio
    if round_trip == "dedicated":
        calls: queue.SimpleQueue = queue.SimpleQueue()
        token = trio.lowlevel.current_trio_token()

        def work() -> None:
            while True:
                task = calls.get()
                token.run_sync_soon(trio.lowlevel.reschedule, task)

        threading.Thread(target=work, daemon=True).start()

        async def via_thread() -> None:
            calls.put(trio.lowlevel.current_task())
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return via_thread
    return None


async def _session(sock: socket.socket, hand_off) -> None:  # noqa: ANN001
    import trio

    sock.setblocking(False)
    try:
        sock.send(b"220 floor ESMTP\r\n")
        buffer, in_data = b"", False
        while True:
            try:
                received = sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            if not received:
                return
            buffer += received
            out = []
            while True:
                if in_data:
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    buffer, in_data = buffer[end + 5:], False
                    if hand_off is not None:
                        await hand_off()
                    out.append(b"250 2.0.0 OK\r\n")
                    continue
                end = buffer.find(b"\n")
                if end < 0:
                    break
                line, buffer = buffer[:end], buffer[end + 1:]
                verb = line[:4].upper()
                if verb == b"EHLO":
                    out.append(b"250-floor\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    out.append(b"354 go ahead\r\n")
                    buffer, in_data = b"\r\n" + buffer, True
                elif verb == b"QUIT":
                    sock.send(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    out.append(b"250 2.0.0 OK\r\n")
            if out:
                sock.send(b"".join(out))
            await trio.lowlevel.checkpoint()
    except OSError:
        pass
    finally:
        sock.close()


# --- the benchmark ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--thread-round-trip", choices=["trio", "dedicated"], nargs="?", const="trio")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: be a responder
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.thread_round_trip)
        return 0
    port = free_port(HOST)
    extra = ["--thread-round-trip", args.thread_round_trip] if args.thread_round_trip else []
    procs = [subprocess.Popen([sys.executable, __file__, "--serve", str(port), *extra])
             for _ in range(args.processes)]
    try:
        wait_for_port(HOST, port, alive=lambda: all(p.poll() is None for p in procs))
        before = sum(tree_cpu_seconds(p.pid) for p in procs)
        run = run_smtp_source(HOST, port, messages=args.messages, sessions=args.sessions)
        cpu = sum(tree_cpu_seconds(p.pid) for p in procs) - before
    except BenchError as exc:
        print(f"floor: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(machine_summary())
    what = f"{args.processes} process(es)" + (f", {args.thread_round_trip} thread round trip per message"
                                              if args.thread_round_trip else "")
    print(f"floor ({what}): {args.messages / run.seconds:,.0f} messages/s, "
          f"{1000 * cpu / args.messages:.3f} CPU s per 1k messages"
          + ("" if run.ok else f"; smtp-source reported errors: {run.stderr[-500:]}"))
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
