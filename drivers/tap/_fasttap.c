/*
 * drivers.tap._fasttap: the tap fd's per-frame read and write loops in C.
 *
 * The compiled twin of drivers/tap/frameio.py (read_batch, write_frames), which is the
 * reference and says what each does; QEMU's equivalents are tap_send and
 * tap_receive_iov in net/tap.c. Same system calls, same bytes, same order; a failed
 * call is reported as an errno in the result, never raised (EINTR is retried after the
 * interpreter's signal handlers ran, as os.read does; an exception from a handler
 * propagates).
 *
 * Memory safety: a read lands in a buffer of exactly `size` bytes owned by this module
 * (grown on demand, used with the GIL held) and at most the count the kernel returned is
 * copied out; writes take each frame through the buffer protocol and never look past
 * its length (a frame shorter than a header is written as far as it goes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define HDR_LEN 12 /* virtio_net_hdr_v1 */
enum { AS_IS = 0, PREFIXED = 1, NARROWED = 2 };

static char *rbuf;
static Py_ssize_t rbuf_size;

static PyObject *
result(PyObject *first, long err)
{
    if (first == NULL)
        return NULL;
    PyObject *t = Py_BuildValue("(Nl)", first, err);
    return t;
}

static PyObject *
read_batch(PyObject *module, PyObject *args)
{
    int fd;
    Py_ssize_t count, size, min_len;
    if (!PyArg_ParseTuple(args, "innn:read_batch", &fd, &count, &size, &min_len))
        return NULL;
    if (size < 0 || min_len < 0) {
        PyErr_SetString(PyExc_ValueError, "negative size");
        return NULL;
    }
    if (size > rbuf_size || rbuf == NULL) {
        char *grown = PyMem_Realloc(rbuf, size > 0 ? (size_t)size : 1);
        if (grown == NULL)
            return PyErr_NoMemory();
        rbuf = grown;
        rbuf_size = size > 0 ? size : 1;
    }
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return NULL;
    long err = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        ssize_t n = read(fd, rbuf, (size_t)size);
        if (n < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    Py_DECREF(frames);
                    return NULL;
                }
                k--;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                err = errno;
            break;
        }
        PyObject *frame;
        if (n < min_len) {
            if (n == 0) /* end of file (an empty frame when min_len is 0) */
                break;
            frame = PyBytes_FromStringAndSize(NULL, min_len);
            if (frame != NULL) {
                memcpy(PyBytes_AS_STRING(frame), rbuf, (size_t)n);
                memset(PyBytes_AS_STRING(frame) + n, 0, (size_t)(min_len - n));
            }
        } else {
            frame = PyBytes_FromStringAndSize(rbuf, n);
        }
        if (frame == NULL || PyList_Append(frames, frame) < 0) {
            Py_XDECREF(frame);
            Py_DECREF(frames);
            return NULL;
        }
        Py_DECREF(frame);
    }
    return result(frames, err);
}

/* One frame out; 0, or -1 with errno set (EINTR retried here), or -2 on a Python error. */
static int
write_one(int fd, PyObject *frame, int mode, Py_buffer *prefix, Py_ssize_t hdr)
{
    Py_buffer view;
    if (PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE) < 0)
        return -2;
    struct iovec iov[2];
    int iovcnt;
    const char *p = view.buf;
    Py_ssize_t len = view.len;
    if (mode == AS_IS) {
        iov[0].iov_base = (void *)p;
        iov[0].iov_len = (size_t)len;
        iovcnt = 1;
    } else if (mode == PREFIXED) {
        iov[0].iov_base = prefix->buf;
        iov[0].iov_len = (size_t)prefix->len;
        iov[1].iov_base = (void *)p;
        iov[1].iov_len = (size_t)len;
        iovcnt = 2;
    } else { /* NARROWED: view[:hdr], view[HDR_LEN:] */
        Py_ssize_t head = hdr < len ? hdr : len;
        Py_ssize_t skip = HDR_LEN < len ? HDR_LEN : len;
        iov[0].iov_base = (void *)p;
        iov[0].iov_len = (size_t)(head > 0 ? head : 0);
        iov[1].iov_base = (void *)(p + skip);
        iov[1].iov_len = (size_t)(len - skip);
        iovcnt = 2;
    }
    int rc = 0;
    for (;;) {
        ssize_t n = iovcnt == 1 ? write(fd, iov[0].iov_base, iov[0].iov_len)
                                : writev(fd, iov, iovcnt);
        if (n >= 0)
            break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                rc = -2;
                break;
            }
            continue;
        }
        rc = -1;
        break;
    }
    int saved = errno;
    PyBuffer_Release(&view);
    errno = saved;
    return rc;
}

static PyObject *
write_frames(PyObject *module, PyObject *args)
{
    int fd, mode;
    PyObject *frames;
    Py_ssize_t start, hdr;
    Py_buffer prefix;
    if (!PyArg_ParseTuple(args, "iOniy*n:write_frames", &fd, &frames, &start, &mode, &prefix,
                          &hdr))
        return NULL;
    if (mode < AS_IS || mode > NARROWED) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_ValueError, "unknown write mode");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(frames, "frames must be a sequence");
    if (seq == NULL) {
        PyBuffer_Release(&prefix);
        return NULL;
    }
    Py_ssize_t i = start;
    long err = 0;
    for (; i < PySequence_Fast_GET_SIZE(seq); i++) {
        if (i < 0) { /* frames[i] of Python: negative indexes count from the end */
            PyErr_SetString(PyExc_IndexError, "negative start");
            goto fail;
        }
        int rc = write_one(fd, PySequence_Fast_GET_ITEM(seq, i), mode, &prefix, hdr);
        if (rc == -2)
            goto fail;
        if (rc == -1) {
            err = errno;
            break;
        }
    }
    Py_DECREF(seq);
    PyBuffer_Release(&prefix);
    return result(PyLong_FromSsize_t(i), err);
fail:
    Py_DECREF(seq);
    PyBuffer_Release(&prefix);
    return NULL;
}

static PyMethodDef fasttap_methods[] = {
    {"read_batch", read_batch, METH_VARARGS,
     "read_batch(fd, count, size, min_len) -> (frames, errno or 0)"},
    {"write_frames", write_frames, METH_VARARGS,
     "write_frames(fd, frames, start, mode, prefix, hdr) -> (index reached, errno or 0)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fasttap_module = {
    PyModuleDef_HEAD_INIT, "_fasttap",
    "The tap fd's per-frame read and write loops (see drivers/tap/frameio.py).", -1,
    fasttap_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fasttap(void)
{
    return PyModule_Create(&fasttap_module);
}
