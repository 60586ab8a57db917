/* SIGBUS guard for guest memory mapped from a vhost-user front end's files.
 *
 * A MAP_SHARED mapping of a file the front end may truncate raises SIGBUS on the first
 * access past the new end of file (also on a hugetlbfs page that cannot be allocated, or a
 * hardware memory error).  CPython cannot catch that: its handler only sets a flag, the
 * faulting instruction runs again and faults again.  This module installs a SIGBUS
 * handler that, for a fault inside a registered range, replaces the faulting page (at the
 * range's page size) with private anonymous memory, counts the fault and returns: the
 * instruction is restarted and completes on that page (reads see zeros, writes go
 * nowhere).  The Python side reads the counters after each batch and stops the device.
 * A SIGBUS outside every registered range (or one raised by kill/raise) goes to the
 * handler that was installed before this one, or to the default action.
 *
 * The range table is a fixed array: the handler never allocates or locks.  A slot is
 * published by storing its start address last (release) and retired by storing 0; the
 * handler loads the start with acquire semantics before reading the rest.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>

#define SLOTS 4096

struct slot {
    uintptr_t start; /* 0: free */
    uintptr_t len;
    uintptr_t page;
    uint64_t faults;
};

static struct slot slots[SLOTS];
static uint64_t total_faults;
static struct sigaction previous;
static int have_previous;
static volatile sig_atomic_t chaining;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    int saved = errno;
    if (info != NULL && info->si_code > 0) { /* raised by the kernel for a fault */
        uintptr_t addr = (uintptr_t)info->si_addr;
        for (int i = 0; i < SLOTS; i++) {
            uintptr_t start = __atomic_load_n(&slots[i].start, __ATOMIC_ACQUIRE);
            if (start == 0 || addr - start >= slots[i].len)
                continue;
            uintptr_t page = slots[i].page;
            uintptr_t at = addr & ~(page - 1);
            void *p = mmap((void *)at, page, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED)
                break;
            __atomic_add_fetch(&slots[i].faults, 1, __ATOMIC_RELEASE);
            __atomic_add_fetch(&total_faults, 1, __ATOMIC_RELEASE);
            errno = saved;
            return;
        }
    }
    /* Not a fault in guest memory: whatever was there before us decides.  A handler that
     * was installed after us and chained back to us (faulthandler restores its previous
     * handler - this one - and raises again) must not loop: a nested call takes the
     * default action. */
    if (chaining) {
        signal(SIGBUS, SIG_DFL);
    } else if (have_previous && (previous.sa_flags & SA_SIGINFO) &&
               previous.sa_sigaction != NULL) {
        chaining = 1;
        previous.sa_sigaction(sig, info, ctx);
        chaining = 0;
    } else if (have_previous && previous.sa_handler != SIG_DFL &&
               previous.sa_handler != SIG_IGN) {
        chaining = 1;
        previous.sa_handler(sig);
        chaining = 0;
    } else {
        signal(SIGBUS, SIG_DFL); /* the instruction faults again and the default applies */
    }
    errno = saved;
}

static int is_ours(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_sigbus;
}

/* install(): make on_sigbus the SIGBUS handler (again, if something replaced it). */
static PyObject *guard_install(PyObject *self, PyObject *noargs)
{
    struct sigaction now, sa;
    if (sigaction(SIGBUS, NULL, &now) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (is_ours(&now))
        Py_RETURN_FALSE;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    previous = now;
    have_previous = 1;
    if (sigaction(SIGBUS, &sa, NULL) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_TRUE;
}

static PyObject *guard_installed(PyObject *self, PyObject *noargs)
{
    struct sigaction now;
    if (sigaction(SIGBUS, NULL, &now) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(is_ours(&now));
}

/* add(start, length, page) -> slot: guard [start, start + length); page is a power of two. */
static PyObject *guard_add(PyObject *self, PyObject *args)
{
    unsigned long long start, len, page;
    if (!PyArg_ParseTuple(args, "KKK", &start, &len, &page))
        return NULL;
    if (start == 0 || len == 0 || page == 0 || (page & (page - 1)) || start % page ||
        start + len < start) {
        PyErr_SetString(PyExc_ValueError, "bad guarded range");
        return NULL;
    }
    /* A slot overlapping the new range is stale: the kernel just handed these addresses
     * out, so whatever that slot described is no longer mapped there (its owner went
     * without unregistering). Left in place it would take the new range's faults. */
    for (int i = 0; i < SLOTS; i++) {
        uintptr_t s = __atomic_load_n(&slots[i].start, __ATOMIC_ACQUIRE);
        if (s != 0 && s < (uintptr_t)(start + len) && (uintptr_t)start < s + slots[i].len)
            __atomic_store_n(&slots[i].start, 0, __ATOMIC_RELEASE);
    }
    for (int i = 0; i < SLOTS; i++) {
        if (__atomic_load_n(&slots[i].start, __ATOMIC_ACQUIRE) != 0)
            continue;
        slots[i].len = (uintptr_t)len;
        slots[i].page = (uintptr_t)page;
        __atomic_store_n(&slots[i].faults, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&slots[i].start, (uintptr_t)start, __ATOMIC_RELEASE);
        return PyLong_FromLong(i);
    }
    PyErr_SetString(PyExc_OverflowError, "no free guard slot");
    return NULL;
}

static int slot_arg(PyObject *args, int *out)
{
    if (!PyArg_ParseTuple(args, "i", out))
        return -1;
    if (*out < 0 || *out >= SLOTS) {
        PyErr_SetString(PyExc_IndexError, "guard slot out of range");
        return -1;
    }
    return 0;
}

/* remove(slot): stop guarding (call once nothing touches the range any more). */
static PyObject *guard_remove(PyObject *self, PyObject *args)
{
    int i;
    if (slot_arg(args, &i) < 0)
        return NULL;
    __atomic_store_n(&slots[i].start, 0, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* faults(slot) -> faults fixed up in that slot since it was added. */
static PyObject *guard_faults(PyObject *self, PyObject *args)
{
    int i;
    if (slot_arg(args, &i) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&slots[i].faults, __ATOMIC_ACQUIRE));
}

/* total() -> faults fixed up in every slot since the module was loaded. */
static PyObject *guard_total(PyObject *self, PyObject *noargs)
{
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&total_faults, __ATOMIC_ACQUIRE));
}

/* fs_type(fd) -> (f_type, f_bsize) from fstatfs(2). */
static PyObject *guard_fs_type(PyObject *self, PyObject *args)
{
    int fd;
    struct statfs st;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    if (fstatfs(fd, &st) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(KK)", (unsigned long long)(unsigned long)st.f_type,
                         (unsigned long long)st.f_bsize);
}

static PyMethodDef methods[] = {
    {"install", guard_install, METH_NOARGS, NULL},
    {"installed", guard_installed, METH_NOARGS, NULL},
    {"add", guard_add, METH_VARARGS, NULL},
    {"remove", guard_remove, METH_VARARGS, NULL},
    {"faults", guard_faults, METH_VARARGS, NULL},
    {"total", guard_total, METH_NOARGS, NULL},
    {"fs_type", guard_fs_type, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_memguard", "SIGBUS guard for guest memory mappings.", -1, methods,
};

PyMODINIT_FUNC PyInit__memguard(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "SLOTS", SLOTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
