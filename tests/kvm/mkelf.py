#!/usr/bin/env python3
"""mkelf.py OUT HEXCODE - write a minimal PVH ELF whose 32-bit entry runs HEXCODE.

Used by tier-1 tests for exits the test guest never takes on purpose
(reset through the i8042, ACPI S5 from ring 0, a triple fault)."""
import struct
import sys

out, code = sys.argv[1], bytes.fromhex(sys.argv[2])
LOAD = 0x100000
ehsize, phsize = 64, 56
note_off = ehsize + 2 * phsize
note = struct.pack('<III4sQ', 4, 8, 18, b'Xen\0', LOAD)
code_off = 0x1000
ehdr = struct.pack('<16sHHIQQQIHHHHHH',
                   b'\x7fELF\x02\x01\x01' + b'\0' * 9, 2, 62, 1, LOAD, ehsize, 0, 0,
                   ehsize, phsize, 2, 0, 0, 0)
load = struct.pack('<IIQQQQQQ', 1, 7, code_off, LOAD, LOAD, len(code), len(code), 0x1000)
pnote = struct.pack('<IIQQQQQQ', 4, 4, note_off, 0, 0, len(note), len(note), 4)
img = bytearray(ehdr + load + pnote + note)
img += b'\0' * (code_off - len(img))
img += code
open(out, 'wb').write(img)
