"""A RECORDING STAND-IN for ``pycuda.driver``: NOT CUDA. Device memory is host memory (a device
pointer is a host address, which tests/trt_standin.py's engines read and write), and ``calls``
records what a leak or a wrong order would show: context push/pop/retain/detach, device
allocations and frees, and when page-locked buffers and streams are made and garbage-collected.
test_trt_runtime.py checks that it defines only names pycuda has (tests/data/api/pycuda-driver.txt)."""
from __future__ import annotations

import ctypes
import sys
import types
import weakref

import numpy as np


def make_pycuda(init_error: str | None = None, fail_alloc: int | None = None) -> types.ModuleType:  # noqa: C901 - the branches are its nested stand-in classes', one module per call
    """A fresh stand-in ``pycuda.driver`` module. ``init_error``: what cuInit fails with (as pycuda's
    Error, the base of what it raises); ``fail_alloc``: the mem_alloc (1, 2, ...) that runs out of memory."""
    cuda = types.ModuleType("pycuda.driver")
    cuda.calls = calls = []
    memory: dict[int, np.ndarray] = {}
    cuda.Error = type("Error", (Exception,), {})

    def init() -> None:
        if init_error:
            raise cuda.Error(init_error)

    class Context:
        def push(self) -> None:
            calls.append("push")

        @staticmethod
        def pop() -> None:
            calls.append("pop")

        def detach(self) -> None:
            calls.append("detach")

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        def name(self) -> str:
            return "Stand-in Orin"

        def compute_capability(self) -> tuple[int, int]:
            return 8, 7

        def retain_primary_context(self) -> Context:
            calls.append("retain")
            return Context()

    class DeviceAllocation(int):
        def free(self) -> None:
            calls.append("free")
            del memory[self]

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        if calls.count("alloc") + 1 == fail_alloc:
            raise cuda.Error("cuMemAlloc failed: out of memory")
        buffer = np.zeros(nbytes, np.uint8)
        memory[buffer.ctypes.data] = buffer
        calls.append("alloc")
        return DeviceAllocation(buffer.ctypes.data)

    def memcpy_htod(dest: int, src: np.ndarray) -> None:
        ctypes.memmove(int(dest), np.ascontiguousarray(src).ctypes.data, src.nbytes)

    def memcpy_htod_async(dest: int, src: np.ndarray, stream: object = None) -> None:
        memcpy_htod(dest, src)

    def memcpy_dtoh_async(dest: np.ndarray, src: int, stream: object = None) -> None:
        ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)

    def pagelocked_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        array = np.empty(shape, dtype)
        weakref.finalize(array, calls.append, "host freed")
        return array

    class Stream:
        handle = 0

        def __init__(self) -> None:
            weakref.finalize(self, calls.append, "stream freed")

        def synchronize(self) -> None:
            pass

    for value in (init, Context, Device, DeviceAllocation, mem_alloc, memcpy_htod, memcpy_htod_async, memcpy_dtoh_async, pagelocked_empty, Stream):
        setattr(cuda, value.__name__, value)
    cuda.get_version, cuda.get_driver_version = lambda: (12, 6, 0), lambda: 12060
    return cuda


def install_pycuda(monkeypatch, **options) -> types.ModuleType:
    """A fresh stand-in (``options``: make_pycuda's), importable as ``pycuda.driver`` for the test."""
    cuda = make_pycuda(**options)
    package = types.ModuleType("pycuda")
    package.driver = cuda
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return cuda
