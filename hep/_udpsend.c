/* HepSender.send_packets's loop for a UDP socket, in C (hep/sender.py).
 *
 * send_all(fd, packets, start) -> (index, bytes, errno)
 *
 * Sends packets[start:] on the connected non-blocking socket `fd`, one send() each (one
 * datagram per packet, in order), as socket.send would (retried on EINTR, signals checked),
 * and stops at the first that fails: returns the index of the packet that failed (or
 * len(packets) when all went out), the bytes sent, and the failure's errno (0 when none). The
 * caller counts what went out and handles the failed packet, and those after it, as `send`
 * does. One call per batch instead of a Python call and a socket method call per packet.
 *
 * (sendmmsg, one system call for the batch, was measured in C against one send() per
 * datagram on loopback: no gain, the kernel's per-datagram work dominates; and it loses the
 * error of a datagram after the first, which `send` must see: ECONNREFUSED starts a backoff.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/types.h>

static PyObject *
send_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_all takes 3 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    Py_ssize_t i = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (fd < -1 || fd > INT_MAX) { /* -1, a closed socket: send() fails, EBADF */
        PyErr_SetString(PyExc_ValueError, "send_all: not a file descriptor");
        return NULL;
    }
    PyObject *packets = args[1];
    if (!PyList_Check(packets)) {
        PyErr_SetString(PyExc_TypeError, "send_all: a list of bytes");
        return NULL;
    }
    if (i < 0) {
        i = 0;
    }
    long long sent = 0;
    int err = 0;
    for (; i < PyList_GET_SIZE(packets); i++) {
        PyObject *p = PyList_GET_ITEM(packets, i);
        if (!PyBytes_Check(p)) {
            PyErr_SetString(PyExc_TypeError, "send_all: a list of bytes");
            return NULL;
        }
        ssize_t n;
        for (;;) {
            n = send((int)fd, PyBytes_AS_STRING(p), (size_t)PyBytes_GET_SIZE(p), 0);
            if (n >= 0 || errno != EINTR) {
                break;
            }
            if (PyErr_CheckSignals() < 0) {
                return NULL;
            }
        }
        if (n < 0) {
            err = errno;
            break;
        }
        sent += n;
    }
    return Py_BuildValue("nLi", i, sent, err);
}

static PyMethodDef methods[] = {
    {"send_all", (PyCFunction)(void (*)(void))send_all, METH_FASTCALL,
     "Send packets[start:] on a connected UDP socket: (index stopped at, bytes, errno)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_udpsend", "One call for a batch of HEP datagrams.", -1, methods,
};

PyMODINIT_FUNC
PyInit__udpsend(void)
{
    return PyModule_Create(&module);
}
