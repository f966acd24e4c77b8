"""Real NBD clients for tests: any client run to completion, and qemu-io driven one
command at a time."""

from __future__ import annotations

import asyncio

WAIT = 60.0  # bound on any one wait; the tests take a few seconds each


class QemuIo:
    """A qemu-io process holding the export open, driven on stdin: it answers each command
    and then prompts for the next, so an answer is everything up to the next prompt."""

    PROMPT = b"qemu-io> "

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def open(cls, uri: str) -> QemuIo:
        process = await asyncio.create_subprocess_exec(
            "qemu-io", "-f", "raw", uri,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        io = cls(process)
        await io._answer(WAIT)  # the first prompt: the export is open
        return io

    async def command(self, line: str, timeout: float = WAIT) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        return await self._answer(timeout)

    async def _answer(self, timeout: float) -> str:
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                raw = await self.process.stdout.readuntil(self.PROMPT)
        except asyncio.IncompleteReadError as exc:
            raise AssertionError(f"qemu-io ended: {exc.partial.decode(errors='replace')}") from exc
        return raw[: -len(self.PROMPT)].decode(errors="replace")

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(b"quit\n")
                async with asyncio.timeout(10):
                    await self.process.wait()
            except (TimeoutError, ConnectionError):
                self.process.kill()
                await self.process.wait()


async def run(*argv: str, timeout: float = WAIT, check: bool = True) -> tuple[int, str, str]:
    """Run a client to completion: (exit code, stdout, stderr). With ``check``, a failure
    fails the test with the client's stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    if check:
        assert process.returncode == 0, f"{argv} exited {process.returncode}: {err.decode()}"
    return process.returncode, out.decode(), err.decode()
