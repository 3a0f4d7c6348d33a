# Copyright (c) mmvheat contributors. All rights reserved.
"""Crafted checkpoint files, as an attacker or a clumsy user makes them.

The primitives write what torch writes (``torch.save`` of objects whose
``__reduce__`` asks for what an attacker would, or raw pickle opcodes in
torch's zip layout); the builders below them turn a real mmengine
checkpoint into a crafted one. A new attack is one function here and one
line in the table of the test that uses it.
"""
import copy
import copyreg
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import torch

#: numpy's reconstructor, as pickles name it under numpy 1 and 2.
RECONSTRUCT = (
    np._core.multiarray._reconstruct
    if hasattr(np, '_core') else np.core.multiarray._reconstruct)


# -- primitives ---------------------------------------------------------------
class Reduce:
    """Pickles as ``func(*args)``, followed by ``BUILD state`` if given."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state

    def __call__(self, *args):
        pass  # pickle wants a callable ``func``; never called here


class NewObj:
    """Pickles as ``cls.__new__(cls, *args)`` (NEWOBJ) then ``BUILD``."""

    def __init__(self, cls, *args, state=None):
        self.cls, self.args, self.state = cls, args, state

    @property
    def __class__(self):
        # pickle writes NEWOBJ only for an object of the class it names.
        return self.cls

    def __reduce__(self):
        return copyreg.__newobj__, (self.cls, ) + self.args, self.state


def pickled(obj) -> bytes:
    """``obj``'s pickle opcodes without the protocol header and STOP."""
    data = pickle.dumps(obj, protocol=2)
    assert data[:2] == b'\x80\x02' and data[-1:] == b'.'
    return data[2:-1]


def opcode_unicode(text: str) -> bytes:
    """``BINUNICODE text``."""
    data = text.encode()
    return b'X' + struct.pack('<I', len(data)) + data


def torch_archive(path, pickle_bytes: bytes, records=None) -> str:
    """A file in torch's zip layout whose ``data.pkl`` is ``pickle_bytes``.

    Args:
        path: The file to write.
        pickle_bytes (bytes): The pickle.
        records (dict, optional): More records, ``name: (bytes, compress
            type)``, e.g. tensor data. Defaults to None.
    """
    template = f'{path}.template'
    torch.save({}, template)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, 'w') as dst:
        prefix = src.namelist()[0].split('/')[0]
        for entry in src.namelist():
            data = src.read(entry)
            dst.writestr(entry,
                         pickle_bytes if entry.endswith('/data.pkl') else data)
        for name, (data, compress_type) in (records or {}).items():
            dst.writestr(f'{prefix}/{name}', data, compress_type=compress_type)
    os.remove(template)
    return str(path)


def save(path, obj) -> str:
    """``torch.save(obj, path)``; returns the path."""
    torch.save(obj, str(path))
    return str(path)


# -- payloads -----------------------------------------------------------------
def touch(marker) -> Reduce:
    """A pickle that runs ``touch marker`` when unpickled with full pickle."""
    return Reduce(os.system, f'touch {marker}')


def config_running(marker) -> str:
    """A config text that runs ``touch marker`` when executed."""
    return f"x = __import__('os').system('touch {marker}')\ngpu_ids = [0]\n"


# -- hostile sizes ------------------------------------------------------------
def _bytearray_call(size: int) -> bytes:
    """A pickle that asks for ``bytearray(size)``."""
    length = (size.bit_length() + 8) // 8
    body = (b'cbuiltins\nbytearray\n' + b'\x8a' + bytes([length]) +
            size.to_bytes(length, 'little', signed=True) + b'\x85R')
    return b'\x80\x02' + body + b'.'


def bytearray_bomb(path, size: int) -> str:
    """A file of a few hundred bytes that asks for ``bytearray(size)``
    (torch's own allowlist holds ``builtins.bytearray``)."""
    return torch_archive(path, _bytearray_call(size))


def legacy_bytearray_bomb(path, size: int, slot: int) -> str:
    """:func:`bytearray_bomb` in ``torch.save``'s legacy format, whose
    pickles torch reads one after another (the magic number, the protocol,
    the system information, the objects): the pickle at ``slot`` asks for
    ``bytearray(size)``, the ones before it are what torch writes."""
    sys_info = dict(
        protocol_version=torch.serialization.PROTOCOL_VERSION,
        little_endian=True,
        type_sizes=dict(short=2, int=4, long=4))
    pickles = [
        pickle.dumps(value, protocol=2)
        for value in (torch.serialization.MAGIC_NUMBER,
                      torch.serialization.PROTOCOL_VERSION, sys_info)
    ]
    with open(path, 'wb') as file:
        file.write(b''.join(pickles[:slot]) + _bytearray_call(size))
    return str(path)


def tensor_opcodes(numel: int, key: str = '0') -> bytes:
    """The opcodes torch writes for a float32 tensor of ``numel`` values
    whose storage is the archive's record ``data/<key>``."""
    storage = (b'(' + opcode_unicode('storage') + b'ctorch\nFloatStorage\n' +
               opcode_unicode(key) + opcode_unicode('cpu') + b'J' +
               struct.pack('<i', numel) + b'tQ')
    return (b'ctorch._utils\n_rebuild_tensor_v2\n(' + storage + b'K\x00J' +
            struct.pack('<i', numel) + b'\x85K\x01\x85\x89' +
            b'ccollections\nOrderedDict\n)RtR')


def deflate_bomb(path, size: int) -> str:
    """``{'w': float32 tensor}`` whose ``size`` bytes of zeros are stored
    deflated: torch's reader inflates them, although ``torch.save`` never
    compresses."""
    body = b'}' + opcode_unicode('w') + tensor_opcodes(size // 4) + b's'
    path = torch_archive(path, b'\x80\x02' + body + b'.')
    with zipfile.ZipFile(path, 'a', compresslevel=1) as archive:
        prefix = archive.namelist()[0].split('/')[0]
        record = zipfile.ZipInfo(f'{prefix}/data/0')
        record.compress_type = zipfile.ZIP_DEFLATED
        chunk = bytes(1 << 24)
        with archive.open(record, 'w', force_zip64=True) as stream:
            for _ in range(size // len(chunk)):
                stream.write(chunk)
            stream.write(bytes(size % len(chunk)))
    return path


def numpy_array(shape, data: bytes, dtype='f8') -> Reduce:
    """A numpy array as numpy pickles it, with any shape and data."""
    state = (3, '<', None, None, None, -1, -1, 0)
    return Reduce(
        RECONSTRUCT,
        np.ndarray, (0, ),
        b'b',
        state=(1, shape, Reduce(np.dtype, dtype, False, True,
                                state=state), False, data))


# -- from a real mmengine checkpoint ------------------------------------------
def with_changes(checkpoint: dict, **entries) -> dict:
    """A deep copy of ``checkpoint`` with top-level entries replaced (None
    removes one)."""
    crafted = copy.deepcopy(checkpoint)
    for key, value in entries.items():
        if value is None:
            crafted.pop(key, None)
        else:
            crafted[key] = value
    return crafted


def with_meta(checkpoint: dict, **entries) -> dict:
    """A deep copy of ``checkpoint`` with ``meta`` entries replaced (None
    removes one)."""
    crafted = copy.deepcopy(checkpoint)
    for key, value in entries.items():
        if value is None:
            crafted['meta'].pop(key, None)
        else:
            crafted['meta'][key] = value
    return crafted


def with_weight(checkpoint: dict, key: str, value) -> dict:
    """A deep copy of ``checkpoint`` whose weight ``key`` is ``value``."""
    crafted = copy.deepcopy(checkpoint)
    crafted['state_dict'][key] = value
    return crafted


def ordered_dict(pairs, attributes: dict) -> Reduce:
    """An ``OrderedDict`` of ``pairs`` to which the file gives instance
    ``attributes`` (``items``, ``get``... shadowing its methods)."""
    return Reduce(OrderedDict, list(pairs), state=attributes)


def self_holding_tuple(path, item) -> str:
    """A tuple ``(list, item)`` whose list holds the tuple itself, as the
    file's object (pickle builds the tuple, then appends it to the list)."""
    body = (
        b']q\xf0' +  # the list, as memo 240
        pickled(item) + b'\x86q\xf1' +  # (list, item), as memo 241
        b'h\xf0h\xf1a' +  # list.append(tuple)
        b'h\xf1')  # the tuple on top
    return torch_archive(path, b'\x80\x02' + body + b'.')


def damaged_record(source, path) -> str:
    """A copy of the checkpoint ``source`` with one byte of its first
    tensor record flipped: whole in size and index, wrong in its checksum
    (torch's reader does not check it). Returns the record's name."""
    raw = bytearray(open(source, 'rb').read())
    with zipfile.ZipFile(source) as archive:
        record = next(info for info in archive.infolist()
                      if '/data/' in info.filename and info.file_size >= 8)
    # The local header: 30 bytes, then the name and the extra field.
    name_length, extra_length = struct.unpack(
        '<HH', raw[record.header_offset + 26:record.header_offset + 30])
    start = record.header_offset + 30 + name_length + extra_length
    raw[start + record.file_size // 2] ^= 0xFF
    with open(path, 'wb') as file:
        file.write(raw)
    return record.filename
