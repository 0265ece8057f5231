# TEMP lead scaffolding; replaced by the owner branch
import uuid
from .client import WriteOp
LOCK_NAME = "vsand"
META_OID = "vsand.meta"
class Owner:
    def __init__(self, cluster, io, oid=META_OID):
        self.cluster, self.io, self.oid = cluster, io, oid
        self.cookie = f"vsand {uuid.uuid4()}"
        self._watch = None
    def acquire(self):
        self.io.lock_exclusive(self.oid, LOCK_NAME, self.cookie, "vsand")
    def guard(self, op):
        return op.assert_locked(LOCK_NAME, self.cookie)
    def watch(self, on_lost, timeout=5):
        self._watch = self.io.watch(self.oid, None, on_lost, 0)
    def release(self):
        if self._watch: self._watch.close()
        self.io.unlock(self.oid, LOCK_NAME, self.cookie)
