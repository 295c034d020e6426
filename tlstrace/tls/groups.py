"""The key-exchange groups of an `ssl.SSLContext` (OpenSSL's `SSL_CTX_set1_groups_list`).

Python 3.11's `ssl` sets one group only (`set_ecdh_curve`), and OpenSSL's own default list
accepts finite-field groups up to ffdhe8192 in TLS 1.3: a client that asks for ffdhe8192 makes
one handshake cost the server 200 to 300 times what X25519 costs (`python -m bench.groups`).
So the list is set here, through what the macro `SSL_CTX_set1_groups_list` expands to:
`SSL_CTX_ctrl(ctx, SSL_CTRL_SET_GROUPS_LIST, 0, names)`.

How the context is reached, and why it is safe:
- the symbol is looked up through `_ssl`'s own shared object (`ctypes.CDLL(_ssl.__file__)`),
  which resolves it in exactly the libssl that `_ssl` is linked with;
- CPython's `PySSLContext` keeps its `SSL_CTX *` as the first field after `PyObject_HEAD`
  (Modules/_ssl.c; the `sslkeylog` extension we use for key logs relies on the same layout);
- before that pointer is used to change anything, it is checked: OpenSSL's view of the context
  through it (`SSL_CTX_get_options`, `SSL_CTX_get_verify_mode`, the minimum and maximum
  protocol versions) must equal what `ssl` reports for the same context.
Anything unexpected raises `GroupsError`: tlstrace then refuses to start rather than run with
OpenSSL's default groups.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys
from collections.abc import Callable, Sequence

#: RFC 7919 finite-field groups: each costs a server tens to hundreds of times an X25519
#: handshake; never offered unless a domain lists them.
FINITE_FIELD_GROUPS = frozenset({"ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"})

#: Names to suggest when a name is unknown (the TLS 1.3 groups OpenSSL 3 knows).
KNOWN_TLS13_GROUPS = ("X25519", "X448", "P-256", "P-384", "P-521", *sorted(FINITE_FIELD_GROUPS))

# from openssl/ssl.h (stable since OpenSSL 1.1.0)
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_GET_MIN_PROTO_VERSION = 130
_SSL_CTRL_GET_MAX_PROTO_VERSION = 131


class GroupsError(Exception):
    """The groups cannot be set: an unknown name, or this Python's ssl is not what we expect."""


class _LibSsl:
    """The few libssl functions used here, from the libssl `_ssl` is linked with."""

    def __init__(self) -> None:
        import _ssl

        if sys.implementation.name != "cpython":
            raise GroupsError(
                f"setting key-exchange groups needs CPython (this is {sys.implementation.name})"
            )
        try:
            lib = ctypes.CDLL(_ssl.__file__)
            self.ctrl = lib.SSL_CTX_ctrl
            self.get_options = lib.SSL_CTX_get_options
            self.get_verify_mode = lib.SSL_CTX_get_verify_mode
        except (OSError, AttributeError) as e:
            raise GroupsError(
                f"libssl's SSL_CTX functions are not reachable through "
                f"{getattr(_ssl, '__file__', '_ssl')}: {e}"
            ) from None
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int
        # the C struct of SSLContext must at least hold the pointer after the object header
        base = ssl.SSLContext.__mro__[1]  # _ssl._SSLContext
        if base.__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p):
            raise GroupsError("ssl.SSLContext does not have the layout this code expects")

    def ctx_pointer(self, ctx: ssl.SSLContext) -> int:
        """The `SSL_CTX *` of `ctx`, after checking OpenSSL sees the same context through it."""
        if not isinstance(ctx, ssl.SSLContext):
            raise TypeError(f"not an ssl.SSLContext: {ctx!r}")
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ptr:
            raise GroupsError("ssl.SSLContext holds no SSL_CTX where this code expects it")
        seen = (
            int(self.get_options(ptr)),
            int(self.get_verify_mode(ptr)) & 3,
            int(self.ctrl(ptr, _SSL_CTRL_GET_MIN_PROTO_VERSION, 0, None)),
            int(self.ctrl(ptr, _SSL_CTRL_GET_MAX_PROTO_VERSION, 0, None)),
        )
        expected = (
            int(ctx.options),
            _verify_bits(ctx),
            _proto(ctx.minimum_version),
            _proto(ctx.maximum_version),
        )
        if seen != expected:
            raise GroupsError(
                f"the SSL_CTX found in ssl.SSLContext does not match it (OpenSSL "
                f"sees {seen}, ssl reports {expected}): this Python's ssl module "
                "is not laid out as expected"
            )
        return ptr

    def set_list(self, ptr: int, text: str) -> bool:
        names = ctypes.c_char_p(text.encode())
        return int(self.ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, names)) == 1


def _verify_bits(ctx: ssl.SSLContext) -> int:
    # SSL_VERIFY_PEER = 1, SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2 (as _ssl.c sets them)
    return {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[ctx.verify_mode]


def _proto(version: ssl.TLSVersion) -> int:
    # ssl reports "no limit" as MINIMUM_SUPPORTED / MAXIMUM_SUPPORTED; OpenSSL as 0
    if version in (ssl.TLSVersion.MINIMUM_SUPPORTED, ssl.TLSVersion.MAXIMUM_SUPPORTED):
        return 0
    return int(version)


@functools.cache
def _lib() -> _LibSsl:
    return _LibSsl()


def set_groups(ctx: ssl.SSLContext, names: Sequence[str]) -> None:
    """Offer (client) or accept (server) exactly `names`, in this order of preference.

    TLS 1.3 key shares and TLS 1.2 ECDHE curves both come from this list. Raises
    `GroupsError` when a name is unknown or the list cannot be set."""
    check_names(names)
    lib = _lib()
    if not lib.set_list(lib.ctx_pointer(ctx), ":".join(names)):
        raise GroupsError(f"OpenSSL refused the groups {list(names)}")


def apply(ctx: ssl.SSLContext, names: Sequence[str], error: Callable[[str], Exception]) -> None:
    """`set_groups`, raising `error(why)` (the caller's configuration error) on failure."""
    try:
        set_groups(ctx, names)
    except GroupsError as e:
        raise error(str(e)) from None


#: lists already found good (models are built again at each reload and lookup)
_good: set[tuple[str, ...]] = set()


def check_names(names: Sequence[str]) -> None:
    """Raise `GroupsError` unless OpenSSL accepts each name, and the list as a whole."""
    if tuple(names) in _good:
        return
    if not names:
        raise GroupsError("the list is empty: name at least one group")
    lib = _lib()
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ptr = lib.ctx_pointer(scratch)
    for name in names:
        if not name or any(c in name for c in ":,? \t") or not lib.set_list(ptr, name):
            raise GroupsError(
                f"{name!r} is not a group {ssl.OPENSSL_VERSION} knows (OpenSSL's names, "
                f"e.g. {', '.join(KNOWN_TLS13_GROUPS)})"
            )
    if not lib.set_list(ptr, ":".join(names)):
        raise GroupsError(
            f"{list(names)} names a group twice (an alias counts: P-256 is prime256v1 is secp256r1)"
        )
    _good.add(tuple(names))


def finite_field(names: Sequence[str]) -> list[str]:
    """The finite-field (expensive) groups among `names`."""
    return [n for n in names if n.lower() in FINITE_FIELD_GROUPS]
