"""Ctrl-C or SIGTERM on ``ansible-playbook playbooks/sweep.yml`` stops the sweep on the devices.

The sweep's runs go on in the background on the devices (the source's runner is an async task,
the stage workers are daemons), so that a controller that vanishes (a closed terminal or ssh
session: SIGHUP, or a killed connection) does not stop them. A user who asks to stop means it:
on the first SIGINT or SIGTERM this plugin lets Ansible stop the play as it does ("User
interrupted execution") and, on the way out, runs ``playbooks/stop.yml`` with the same inventory
and extra vars, which stops the runner and the workers by PID and says which run was interrupted.
SIGHUP is left alone. A second Ctrl-C during the stop ends it early.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading

from ansible import context
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: paretopipe_stop
    type: aggregate
    short_description: Stop a sweep's runs on the devices when ansible-playbook sweep.yml is interrupted
    description:
      - On SIGINT or SIGTERM during playbooks/sweep.yml, runs playbooks/stop.yml (same inventory and
        extra vars) as ansible-playbook exits. SIGHUP (a vanished controller) leaves the sweep running.
    requirements:
      - enabled in ansible.cfg (callbacks_enabled)
"""

_PLAYBOOK = "sweep.yml"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "paretopipe_stop"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()
        self._book = ""
        self._signum = 0
        self._previous: dict[int, object] = {}

    def v2_playbook_on_start(self, playbook) -> None:
        book = os.path.abspath(playbook._file_name)
        if os.path.basename(book) != _PLAYBOOK or threading.current_thread() is not threading.main_thread():
            return
        self._book = book
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)  # Ansible's: it tells its workers, then stops
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        previous = self._previous.get(signal.SIGINT)
        if os.getpid() == self._pid and not self._signum:
            self._signum = signum
            atexit.register(self._stop)
        # Ansible's SIGINT path (workers told, KeyboardInterrupt, "User interrupted execution", exit)
        # for SIGTERM too: its SIGTERM path kills the process at once, with no way out to stop.yml.
        if callable(previous):
            previous(signal.SIGINT, frame)
        raise KeyboardInterrupt

    def _stop(self) -> None:
        name = signal.Signals(self._signum).name
        self._display.display(f"[paretopipe] {name}: stopping the sweep's runs on the devices "
                              f"(ansible-playbook playbooks/stop.yml; Ctrl-C again to leave them running)",
                              stderr=True)
        stop = os.path.join(os.path.dirname(self._book), "stop.yml")
        cmd = [os.path.join(os.path.dirname(sys.argv[0]), "ansible-playbook"), stop]
        for inv in context.CLIARGS.get("inventory") or ():
            cmd += ["-i", inv]
        for ev in context.CLIARGS.get("extra_vars") or ():
            cmd += ["-e", ev]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            # its output comes through this process's display: an inherited stdout, as Ansible
            # leaves it at exit, makes the child's ansible-playbook fail (rc 5) without a word
            with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) as child:
                for line in child.stdout or ():
                    self._display.display(line.rstrip("\n"))
        except KeyboardInterrupt:
            self._display.display("[paretopipe] stop abandoned: the sweep may still run on the devices; "
                                  "ansible-playbook playbooks/stop.yml stops it", stderr=True)
