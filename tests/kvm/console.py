#!/usr/bin/env python3
"""console.py GODWIT ELF - run godwit on a pseudo-terminal, wait for the guest's
first report, type Ctrl-A x, and check godwit exits with status 7 and puts
the terminal back in cooked mode."""
import os
import pty
import select
import sys
import termios
import time

T = os.environ.get('TIER', 'kvm') + '/'

godwit, elf = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(godwit, [godwit, 'run', '--kernel', elf, '--mem', '128M',
                      '--cmdline', 'workload=idle report=100'])
out = b''
deadline = time.time() + 20
sent = False
status = None
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b''
        out += chunk
    if not sent and b'idle: t=' in out:
        raw = not (termios.tcgetattr(fd)[3] & termios.ICANON)
        os.write(fd, b'\x01x')
        sent = True
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = st
        break
if status is None:
    os.kill(pid, 9)
    print('FAIL ' + T + 'console-escape: godwit did not exit after Ctrl-A x; output: %r' % out[-300:])
    sys.exit(0)
code = os.waitstatus_to_exitcode(status)
if not sent:
    print('FAIL ' + T + 'console-escape: no idle report; output: %r' % out[-300:])
elif code != 7:
    print('FAIL ' + T + 'console-escape: exit status %d, expected 7; output: %r' % (code, out[-300:]))
else:
    print('PASS ' + T + 'console-escape')
if sent:
    print('PASS ' + T + 'console-raw-mode' if raw else 'FAIL ' + T + 'console-raw-mode: the terminal was not in raw mode')
