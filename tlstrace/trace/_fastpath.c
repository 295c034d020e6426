/* The tracer's per-message fast path (tlstrace/trace/fastpath.py), in C.
 *
 * encode_batch(chunks, start, ts, first, second, second_first, room, session, seen, seen_max,
 *              max_packet, out) -> int
 *
 * Walks chunks[start:] and, for each message the fast path takes, appends its HEP packets to
 * `out`: the packet of `first`'s template (and of `second`'s, before or after it as
 * `second_first` says), then, for a Call-ID not in `seen`, its session record. Keep-alives
 * (a chunk starting with CR, LF, space or tab) are skipped. It returns the index of the first
 * chunk it does not take (len(chunks) when it takes them all), with nothing of that chunk
 * done: an empty chunk, a message larger than `room`, one holding the truncation mark, one
 * whose Call-ID is longer than CALL_ID_MAX, and, when its Call-ID is new, one whose Call-ID
 * JSON would escape or whose session record would exceed `max_packet`. The Python code
 * (ConnectionTracer.messages) handles that chunk and calls again from the next one.
 *
 * It does exactly what fastpath.encode_batch does in Python (tests/test_trace_fastpath.py
 * checks that both give the same packets and leave `seen` the same): the same Call-ID peek
 * as tlstrace.sip.peek.CALL_ID_LINE, the same bytes as PacketTemplate.encode_at, the same
 * record as events.session_record_at, the same `seen` updates (keys are hash(Call-ID)).
 *
 * A template is PacketTemplate.parts: (head, mid, mid_tail, tail_pl, fixed); a session is
 * (record head, its template's parts).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <string.h>

#define CALL_ID_MAX 256
#define MARK "X-Tlstrace-Truncated"
#define MARK_LEN 20
#define TS_LEN 20
#define HEP_MAX 0xFFFF

typedef struct {
    const unsigned char *head, *mid, *mid_tail, *tail_pl;
    Py_ssize_t head_n, mid_n, mid_tail_n, tail_pl_n, fixed;
} Parts;

static int
get_parts(PyObject *obj, Parts *p)
{
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 5) {
        PyErr_SetString(PyExc_TypeError, "a template's parts: a 5-tuple");
        return -1;
    }
    PyObject *b[4];
    for (int i = 0; i < 4; i++) {
        b[i] = PyTuple_GET_ITEM(obj, i);
        if (!PyBytes_Check(b[i])) {
            PyErr_SetString(PyExc_TypeError, "a template's parts: bytes, then an int");
            return -1;
        }
    }
    p->head = (const unsigned char *)PyBytes_AS_STRING(b[0]);
    p->head_n = PyBytes_GET_SIZE(b[0]);
    p->mid = (const unsigned char *)PyBytes_AS_STRING(b[1]);
    p->mid_n = PyBytes_GET_SIZE(b[1]);
    p->mid_tail = (const unsigned char *)PyBytes_AS_STRING(b[2]);
    p->mid_tail_n = PyBytes_GET_SIZE(b[2]);
    p->tail_pl = (const unsigned char *)PyBytes_AS_STRING(b[3]);
    p->tail_pl_n = PyBytes_GET_SIZE(b[3]);
    p->fixed = PyLong_AsSsize_t(PyTuple_GET_ITEM(obj, 4));
    if (p->fixed == -1 && PyErr_Occurred()) {
        return -1;
    }
    /* `encode` writes exactly `fixed` bytes besides the payload and the correlation id only
     * if the parts are those of one template: checked, so that no other tuple can make it
     * write past the packet it allocated */
    if (p->fixed != 6 + p->head_n + TS_LEN + p->mid_tail_n + 6 ||
        p->mid_tail_n != p->mid_n + p->tail_pl_n - 4 || p->tail_pl_n < 4) {
        PyErr_SetString(PyExc_ValueError, "a template's parts: sizes that do not add up");
        return -1;
    }
    return 0;
}

static unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static int
blank(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* CALL_ID_LINE.search(data), then group(1).rstrip(b" \t") or None: 1 and the value's bounds
 * when a Call-ID line comes first and its value is not blank, 0 otherwise */
static int
peek_call_id(const unsigned char *s, Py_ssize_t n, Py_ssize_t *start, Py_ssize_t *len)
{
    const unsigned char *end = s + n, *p = s;
    while (end - p >= 2) {
        const unsigned char *cr = memchr(p, '\r', (size_t)(end - p - 1));
        if (cr == NULL) {
            return 0;
        }
        p = cr + 1;
        if (*p != '\n') {
            continue;
        }
        const unsigned char *q = p + 1, *r = NULL;
        if (end - q >= 7 && lower(q[0]) == 'c' && lower(q[1]) == 'a' && lower(q[2]) == 'l' &&
            lower(q[3]) == 'l' && q[4] == '-' && lower(q[5]) == 'i' && lower(q[6]) == 'd') {
            r = q + 7;
        }
        else if (end - q >= 1 && lower(q[0]) == 'i') {
            r = q + 1;
        }
        if (r != NULL) {
            while (r < end && blank(*r)) {
                r++;
            }
            if (r < end && *r == ':') {
                r++;
                while (r < end && blank(*r)) {
                    r++;
                }
                const unsigned char *v = r;
                while (r < end && *r != '\r' && *r != '\n') {
                    r++;
                }
                while (r > v && blank(r[-1])) {
                    r--;
                }
                *start = v - s;
                *len = r - v;
                return r > v;
            }
        }
        if (end - q >= 2 && q[0] == '\r' && q[1] == '\n') {
            return 0; /* the header section ends first */
        }
    }
    return 0;
}

/* events._JSON_PLAIN: printable ASCII but `"` and `\` */
static int
json_plain(const unsigned char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\') {
            return 0;
        }
    }
    return 1;
}

static unsigned char *
put(unsigned char *w, const void *src, Py_ssize_t n)
{
    memcpy(w, src, (size_t)n);
    return w + n;
}

static unsigned char *
put16(unsigned char *w, Py_ssize_t v)
{
    w[0] = (unsigned char)(v >> 8);
    w[1] = (unsigned char)v;
    return w + 2;
}

/* PacketTemplate.encode_at(ts, payload, cid) (the caller checked that it fits); payload is
 * `pre` then `body` then `post` (the session record is head + Call-ID + '"}') */
static PyObject *
encode(const Parts *t, const unsigned char *ts, const unsigned char *cid, Py_ssize_t c,
       const unsigned char *pre, Py_ssize_t pre_n, const unsigned char *body, Py_ssize_t body_n,
       const char *post, Py_ssize_t post_n)
{
    Py_ssize_t n = pre_n + body_n + post_n;
    Py_ssize_t total = t->fixed + n + (cid != NULL ? 6 + c : 0);
    PyObject *packet = PyBytes_FromStringAndSize(NULL, total);
    if (packet == NULL) {
        return NULL;
    }
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(packet);
    w = put(w, "HEP3", 4);
    w = put16(w, total);
    w = put(w, t->head, t->head_n);
    w = put(w, ts, TS_LEN);
    if (cid == NULL) {
        w = put(w, t->mid_tail, t->mid_tail_n);
        w = put(w, "\x00\x00\x00\x0f", 4);
    }
    else {
        w = put(w, t->mid, t->mid_n);
        w = put(w, "\x00\x00\x00\x11", 4);
        w = put16(w, 6 + c);
        w = put(w, cid, c);
        w = put(w, t->tail_pl, t->tail_pl_n);
    }
    w = put16(w, 6 + n);
    w = put(w, pre, pre_n);
    w = put(w, body, body_n);
    put(w, post, post_n);
    return packet;
}

static int
append(PyObject *out, PyObject *packet)
{
    if (packet == NULL) {
        return -1;
    }
    int rc = PyList_Append(out, packet);
    Py_DECREF(packet);
    return rc;
}

static PyObject *
encode_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "encode_batch takes 12 arguments");
        return NULL;
    }
    PyObject *chunks = args[0], *ts_obj = args[2], *seen = args[8], *out = args[11];
    if (!PyList_Check(chunks) || !PyBytes_Check(ts_obj) || !PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "encode_batch: chunks and out lists, ts bytes");
        return NULL;
    }
    if (PyBytes_GET_SIZE(ts_obj) != TS_LEN) {
        PyErr_SetString(PyExc_ValueError, "ts: the 20 bytes of timestamp_chunks");
        return NULL;
    }
    const unsigned char *ts = (const unsigned char *)PyBytes_AS_STRING(ts_obj);
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    Py_ssize_t room = PyLong_AsSsize_t(args[6]);
    Py_ssize_t seen_max = PyLong_AsSsize_t(args[9]);
    Py_ssize_t max_packet = PyLong_AsSsize_t(args[10]);
    int second_first = PyObject_IsTrue(args[5]);
    if (PyErr_Occurred() || second_first < 0) {
        return NULL;
    }
    Parts first, second, record;
    int has_second = args[4] != Py_None, has_session = args[7] != Py_None;
    const unsigned char *rhead = NULL;
    Py_ssize_t rhead_n = 0;
    if (get_parts(args[3], &first) < 0 || (has_second && get_parts(args[4], &second) < 0)) {
        return NULL;
    }
    if (has_session) {
        PyObject *s = args[7];
        if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(s, 0))) {
            PyErr_SetString(PyExc_TypeError, "session: (record head, template parts)");
            return NULL;
        }
        rhead = (const unsigned char *)PyBytes_AS_STRING(PyTuple_GET_ITEM(s, 0));
        rhead_n = PyBytes_GET_SIZE(PyTuple_GET_ITEM(s, 0));
        if (get_parts(PyTuple_GET_ITEM(s, 1), &record) < 0) {
            return NULL;
        }
    }
    if (i < 0) {
        i = 0;
    }
    if (i > PyList_GET_SIZE(chunks)) {
        i = PyList_GET_SIZE(chunks);
    }
    for (; i < PyList_GET_SIZE(chunks); i++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, i);
        if (!PyBytes_Check(chunk)) {
            break;
        }
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(chunk);
        Py_ssize_t n = PyBytes_GET_SIZE(chunk);
        if (n == 0) {
            break;
        }
        if (data[0] == '\r' || data[0] == '\n' || data[0] == ' ' || data[0] == '\t') {
            continue; /* a keep-alive */
        }
        if (n > room || memmem(data, (size_t)n, MARK, MARK_LEN) != NULL) {
            break;
        }
        Py_ssize_t cstart = 0, c = 0;
        const unsigned char *cid = NULL;
        if (peek_call_id(data, n, &cstart, &c)) {
            cid = data + cstart;
            if (c > CALL_ID_MAX) {
                break;
            }
        }
        PyObject *key = NULL;
        int new_call = 0;
        if (cid != NULL && has_session) {
            PyObject *cid_obj = PyBytes_FromStringAndSize((const char *)cid, c);
            if (cid_obj == NULL) {
                return NULL;
            }
            Py_hash_t h = PyObject_Hash(cid_obj);
            Py_DECREF(cid_obj);
            if (h == -1 || (key = PyLong_FromSsize_t(h)) == NULL) {
                return NULL;
            }
            int known = PySequence_Contains(seen, key);
            if (known < 0) {
                Py_DECREF(key);
                return NULL;
            }
            new_call = !known;
            if (new_call && (!json_plain(cid, c) ||
                             record.fixed + rhead_n + c + 2 + 6 + c > max_packet ||
                             record.fixed + rhead_n + c + 2 + 6 + c > HEP_MAX)) {
                Py_DECREF(key);
                break; /* a record the Python code writes (JSON) or checks */
            }
        }
        if (first.fixed + n + 6 + c > HEP_MAX ||
            (has_second && second.fixed + n + 6 + c > HEP_MAX)) {
            Py_XDECREF(key);
            break; /* not expected: `room` keeps them well below */
        }
        /* the order of the packets: the client's leg, then the backend's, as relayed */
        if ((has_second && second_first &&
             append(out, encode(&second, ts, cid, c, NULL, 0, data, n, NULL, 0)) < 0) ||
            append(out, encode(&first, ts, cid, c, NULL, 0, data, n, NULL, 0)) < 0 ||
            (has_second && !second_first &&
             append(out, encode(&second, ts, cid, c, NULL, 0, data, n, NULL, 0)) < 0)) {
            Py_XDECREF(key);
            return NULL;
        }
        if (new_call) {
            int rc = PyObject_SetItem(seen, key, Py_None);
            Py_DECREF(key);
            if (rc < 0) {
                return NULL;
            }
            Py_ssize_t size = PyObject_Length(seen);
            if (size < 0) {
                return NULL;
            }
            if (size > seen_max) {
                PyObject *r = PyObject_CallMethod(seen, "popitem", "O", Py_False);
                if (r == NULL) {
                    return NULL;
                }
                Py_DECREF(r);
            }
            if (append(out, encode(&record, ts, cid, c, rhead, rhead_n, cid, c, "\"}", 2)) < 0) {
                return NULL;
            }
        }
        else {
            Py_XDECREF(key);
        }
    }
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"encode_batch", (PyCFunction)(void (*)(void))encode_batch, METH_FASTCALL,
     "The fast path's packets for chunks[start:]; the index of the first chunk not taken."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The tracer's per-message fast path in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    return PyModule_Create(&module);
}
