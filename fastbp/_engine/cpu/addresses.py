"""Calls of compiled functions by address, so that each is compiled once."""

import zlib

from numba import types
from numba.extending import intrinsic

#
# ``run`` and ``parallel_groups`` call ``group_pass`` through an address passed in at run
# time, not by name. A call by name links the callee's code into the caller, and numba
# optimizes and compiles the linked code again in every caller: ``group_pass`` was
# compiled four times, and the cold start took 17-19 s instead of 12-15 s. ``run`` calls
# ``parallel_groups`` by address too, and compiles it only for runs whose batches are
# large enough to use it: small networks start 1-2 s sooner; ``group_pass`` itself compiles
# only for runs with a batch too large for ``sample_pass`` (online learning started 16 s
# sooner on the AMD EPYC). ``sample_pass`` stays a
# call by name: it runs once per tiny batch, and LLVM, seeing its code, passes its
# arguments more cheaply (by address it cost about 90 ns more a call).


def signature_code(argtypes):
    """A checksum of numba argument types, the same in every process."""
    return zlib.crc32(repr(tuple(argtypes)).encode())


class Named:
    """Stands in for a dispatcher that is not imported where its caller is compiled (the
    MPI exchange, whose module needs MPI): only its name and return type are needed."""

    def __init__(self, name):
        self.__name__ = name


def caller_of(dispatcher, call=True, returns=None):
    """An intrinsic ``(at, args)``: calls ``dispatcher``'s compiled code at ``at[0]`` with
    the tuple ``args``. ``at[1]`` must be ``signature_code`` of the types of ``args``;
    anything else raises instead of calling code compiled for other types. With
    ``call=False`` it only checks. Given the numba type the callee ``returns``, the
    caller compiles without it, and the callee compiles only when its address is taken."""

    @intrinsic
    def intrinsic_call(typingctx, at, args):
        argtypes = tuple(args.types)
        if returns is None:
            dispatcher.compile(argtypes)
        restype = (
            types.none
            if not call
            else returns
            if returns is not None
            else dispatcher.overloads[argtypes].signature.return_type
        )
        expected = signature_code(argtypes)

        def codegen(context, builder, signature, llargs):
            at, packed = llargs
            address, code = builder.extract_value(at, 0), builder.extract_value(at, 1)
            wrong = builder.icmp_unsigned("!=", code, code.type(expected))
            with builder.if_then(wrong, likely=False):
                context.call_conv.return_user_exc(
                    builder,
                    RuntimeError,
                    (
                        f"{dispatcher.__name__} was given the address of code compiled for "
                        "other argument types",
                    ),
                )
            if not call:
                return context.get_dummy_value()
            values = [builder.extract_value(packed, i) for i in range(len(argtypes))]
            fnty = context.call_conv.get_function_type(restype, argtypes)
            callee = builder.inttoptr(address, fnty.as_pointer())
            status, result = context.call_conv.call_function(
                builder, callee, restype, argtypes, values
            )
            with builder.if_then(status.is_error, likely=False):
                context.call_conv.return_status_propagate(builder, status)
            return result

        return restype(types.UniTuple(types.int64, 2), args), codegen

    return intrinsic_call


def address_of(dispatcher, argtypes):
    """``(address, signature_code)`` of ``dispatcher`` compiled (or loaded from the cache)
    for ``argtypes``: the ``at`` of its intrinsic caller."""
    dispatcher.compile(argtypes)
    compiled = dispatcher.overloads[argtypes]
    address = compiled.library.get_pointer_to_function(compiled.fndesc.mangled_name)
    return address, signature_code(argtypes)
