"""A QEMU guest running Debian's kernel with nbd.ko, for testing vsand with the real
Linux NBD client on a machine that has no nbd module (NBD-NOTES.md, "Testing with the
real Linux kernel client").

The kernel package is downloaded with ``apt-get download`` (never installed) and
cached under ``var/kernel``; the initramfs is built from busybox-static and the host's
own nbd-client, mke2fs, e2fsck, fio and socat. The guest reaches the daemon's UNIX
socket through a virtio-serial port, so it has no network at all. ``guest_init.sh``
is the guest's /init: it runs one scenario and prints one result line on the serial
console, which :func:`boot` returns.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(ROOT, "var", "kernel")
QEMU = "qemu-system-x86_64"
# Load order matters: insmod does not resolve dependencies. crc32c_generic is found
# by jbd2/ext4 through the crypto API, not a symbol, so it must be loaded by name.
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_console", "nbd", "crc16", "mbcache", "jbd2",
           "crc32c_generic", "ext4"]
HOST_TOOLS = ["nbd-client", "mke2fs", "e2fsck", "fio", "socat"]
RESULT = re.compile(r"^VSAND-GUEST: (PASS|FAIL)(?: (\S+))?(.*)$", re.M)


class Unavailable(Exception):
    """Something the guest needs cannot be had on this machine (the test skips)."""


def missing_tools() -> list[str]:
    need = [QEMU, "busybox", "cpio", "apt-get", "dpkg-deb", "ldd", *HOST_TOOLS]
    return [t for t in need if not shutil.which(t)]


@dataclass
class Kernel:
    version: str
    vmlinuz: str
    modules: dict[str, str]       # name -> path of the .ko


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise Unavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    return r


def kernel() -> Kernel:
    """Debian's current amd64 kernel, downloaded once and unpacked into the cache."""
    dep = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    m = re.search(r"Depends: (linux-image-(\S+)-amd64)\b", dep)
    if not m:
        raise Unavailable("apt-cache knows no linux-image-amd64 (apt lists missing?)")
    package, version = m.group(1), m.group(2) + "-amd64"
    root = os.path.join(CACHE, version)
    vmlinuz = os.path.join(root, "boot", f"vmlinuz-{version}")
    if not os.path.exists(vmlinuz):
        os.makedirs(CACHE, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            try:
                _run(["apt-get", "download", package], cwd=tmp, timeout=600)
            except Unavailable:
                if os.geteuid() != 0:
                    raise
                _run(["apt-get", "update", "-qq"], timeout=600)   # stale package lists
                _run(["apt-get", "download", package], cwd=tmp, timeout=600)
            deb = glob.glob(os.path.join(tmp, "*.deb"))[0]
            unpacked = os.path.join(tmp, "x")
            _run(["dpkg-deb", "-x", deb, unpacked], timeout=300)
            shutil.rmtree(root, ignore_errors=True)
            os.rename(unpacked, root)
    mods = {}
    for path in glob.glob(os.path.join(root, "lib", "modules", version, "kernel", "**", "*.ko*"),
                          recursive=True):
        name = os.path.basename(path).split(".ko")[0]
        if name in MODULES:
            mods[name] = path
    if missing := [n for n in MODULES if n not in mods]:
        raise Unavailable(f"kernel {version} lacks modules {missing}")
    if any(p.endswith((".xz", ".zst", ".gz")) for p in mods.values()):
        raise Unavailable("compressed modules: busybox insmod cannot load them")
    return Kernel(version, vmlinuz, mods)


def _libraries(binary: str) -> set[str]:
    out = _run(["ldd", binary]).stdout
    libs = set()
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.add(m.group(1))
    return libs


def initramfs(k: Kernel, out: str) -> str:
    """Write an uncompressed newc cpio for ``k`` to ``out`` (about a second)."""
    tree = out + ".d"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "mnt", "lib/modules", "root"):
        os.makedirs(os.path.join(tree, d), exist_ok=True)

    def put(src: str, dst: str) -> None:
        dst = os.path.join(tree, dst.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(os.path.realpath(src), dst)

    put(shutil.which("busybox"), "/bin/busybox")
    libs: set[str] = set()
    for tool in HOST_TOOLS:
        path = shutil.which(tool)
        put(path, f"/bin/{tool}")
        libs |= _libraries(path)
    for lib in libs:
        put(lib, lib)          # same path in the guest, so the loader finds them
    for name, path in k.modules.items():
        put(path, f"/lib/modules/{name}.ko")
    if os.path.exists("/etc/mke2fs.conf"):
        put("/etc/mke2fs.conf", "/etc/mke2fs.conf")
    put(os.path.join(HERE, "guest_init.sh"), "/init")
    os.chmod(os.path.join(tree, "init"), 0o755)
    os.symlink("mke2fs", os.path.join(tree, "bin", "mkfs.ext4"))
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files,
                       stdout=f, check=True)
    shutil.rmtree(tree)
    return out


@dataclass
class GuestResult:
    passed: bool
    step: str          # the step that failed ("" on PASS)
    detail: str
    console: str       # everything the guest printed on its serial console

    def __str__(self) -> str:
        return self.console[-6000:]


def boot(k: Kernel, initrd: str, nbd_socket: str, export: str, scenario: str = "full",
         timeout: float = 110, socat_delay: int = 0) -> GuestResult:
    """Boot the guest against the daemon listening on ``nbd_socket`` and run
    ``scenario`` (see guest_init.sh) on ``export``. The guest powers itself off.
    ``socat_delay`` starts the guest's socat that many seconds late (the guest must
    wait for its listener, not race it)."""
    append = (f"console=ttyS0 quiet panic=-1 vsand.export={export} vsand.scenario={scenario}"
              + (f" vsand.socat_delay={socat_delay}" if socat_delay else ""))
    cmd = [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "1024",
           "-nic", "none", "-display", "none", "-monitor", "none", "-serial", "stdio",
           "-no-reboot", "-kernel", k.vmlinuz, "-initrd", initrd,
           "-append", append,
           "-device", "virtio-serial-pci",
           "-chardev", f"socket,id=nbd,path={nbd_socket},reconnect=1",
           "-device", "virtserialport,chardev=nbd,name=org.nbd.0"]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        console = r.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        console = (e.stdout or b"").decode(errors="replace") + "\n[vsand test: guest timed out]"
    results = RESULT.findall(console)
    if not results:
        return GuestResult(False, "no-result", "the guest printed no result line", console)
    verdict, step, detail = results[-1]
    return GuestResult(verdict == "PASS", step or "", detail.strip(), console)
