"""Limits and isolation settings of the ``python`` tool's sandbox (``shared.tools.sandbox``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from shared.config import ConfigError, help_field, require_positive

# Isolation layers, strongest first; ``sandbox.isolation_layers()`` says which ones this host gives.
LAYERS = ("fs-jail", "netns", "pidns", "uid", "userns", "rlimits", "audit-hook")
_MAX_UID = 2 ** 31 - 2


@dataclass
class SandboxConfig:
    """How much a snippet may use and which isolation the host must provide before one runs."""

    wall_s: float = help_field(25.0, "wall-clock limit; the whole process tree is killed when it passes (below "
                                     "the gateway's tool_timeout_s, 30 s, so a slow snippet is stopped and says so "
                                     "before its caller gives up)")
    cpu_s: int = help_field(5, "CPU-time limit (RLIMIT_CPU; SIGXCPU at the limit, SIGKILL one second later)")
    memory_mb: int = help_field(256, "address-space limit (RLIMIT_AS) of the snippet's interpreter")
    max_processes: int = help_field(16, "processes + threads of the sandbox user (RLIMIT_NPROC)")
    max_file_mb: int = help_field(16, "largest file the snippet may write (RLIMIT_FSIZE)")
    max_open_files: int = help_field(64, "open file descriptors (RLIMIT_NOFILE)")
    max_disk_mb: int = help_field(32, "size of the jail's work dir (a tmpfs); without the jail only max_file_mb "
                                      "per file bounds what a snippet writes")
    max_output_bytes: int = help_field(8000, "stdout and stderr are each cut here; a snippet printing more is "
                                             "stopped and its result says it was truncated")
    audit_hook: bool = help_field(True, "install the in-process audit hook (blocks open() outside the work dir, "
                                        "subprocesses, sockets, ctypes); off only to test the OS layers alone")
    required_layers: list[str] = help_field([], f"layers the host must provide or nothing runs, out of {list(LAYERS)} "
                                                "(production: [fs-jail, netns]); empty runs with whatever "
                                                "the host allows and logs what is missing")
    uid_base: int = help_field(61000, "first uid of the range a run's unprivileged user is drawn from (when root)")
    uid_count: int = help_field(4000, "size of that range; one uid per run keeps concurrent runs apart")
    expose_paths: list[str] = help_field(["/usr", "/bin", "/lib", "/lib64", "/lib32", "/sbin"],
                                         "host paths visible read-only inside the jail (the interpreter's "
                                         "prefix is added); everything else (/etc, /root, /home, /tmp, the repo) "
                                         "is absent")
    python: Optional[str] = help_field(None, "interpreter that runs snippets (default: this one's base "
                                             "interpreter, outside any venv)")

    def validate(self) -> None:
        require_positive(self, ("cpu_s", "memory_mb", "max_processes", "max_file_mb", "max_open_files",
                                "max_output_bytes", "max_disk_mb", "uid_count"))
        if self.wall_s <= 0:
            raise ConfigError(f"wall_s must be > 0 seconds, got {self.wall_s}")
        unknown = [layer for layer in self.required_layers if layer not in LAYERS]
        if unknown:
            raise ConfigError(f"unknown isolation layer {unknown[0]!r} in required_layers; layers are {list(LAYERS)}")
        if not 1 <= self.uid_base <= _MAX_UID - self.uid_count:
            raise ConfigError(f"uid_base + uid_count must lie in 1..{_MAX_UID}, got {self.uid_base}+{self.uid_count}; "
                              "pick an unused range, e.g. uid_base=61000 uid_count=4000")
        relative = [p for p in self.expose_paths if not p.startswith("/")]
        if relative:
            raise ConfigError(f"expose_paths must be absolute, got {relative[0]!r}")
