/* The framer's fast path for a SIP header section (tlstrace/sip/framing.py), in C.
 *
 * Both functions take the buffer, the message's first byte `pos` and `head_end`, the index of
 * the CRLFCRLF that ends its headers (buf[head_end:head_end + 4] == b"\r\n\r\n"), and return
 * the message's size (headers, blank line and body), or -1: "the Python path decides". They
 * answer only the plain case (every rule met, one length header in its canonical form) and
 * return -1 for anything else, errors and unusual but valid headers (folded lines) alike, so
 * that every error and every unusual case is judged, and explained, by the Python code. They
 * never say more than the Python path would: tests/test_headscan.py checks that each answer is
 * -1 or the Python path's own, on generated and on every framing test's input.
 *
 *   strict_size: SipFramer._check_head with strict on (the client's side): a SIP start line in
 *     its exact case that cannot read as a length header; no NUL, bare CR or bare LF in the
 *     header section; no line beginning with whitespace (folding); exactly one line any of the
 *     fronted servers could read as a length (Content-Length, Content_Length, anything
 *     starting like them, or `l` before whitespace, a colon or the end of the line), and it
 *     exactly `Content-Length` or `l`, a colon, blanks, 1 to 10 digits, blanks.
 *   lenient_size: SipFramer._check_head with strict off (the SIP server's side): exactly one
 *     `Content-Length` or `l` header (after a CRLF, blanks allowed before the colon) whose
 *     value is 1 to 10 digits between blanks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static int
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* buf[s:s + n] equals the lower-case ASCII `word`, ignoring case */
static int
iequal(const unsigned char *s, const char *word, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (lower(s[i]) != (unsigned char)word[i]) {
            return 0;
        }
    }
    return 1;
}

static int
blank(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* `content` [-_] `length` at s (ci), within [s, end) */
static int
content_length_name(const unsigned char *s, const unsigned char *end, int *canonical)
{
    if (end - s < 14 || !iequal(s, "content", 7) || (s[7] != '-' && s[7] != '_') ||
        !iequal(s + 8, "length", 6)) {
        return 0;
    }
    *canonical = s[7] == '-';
    return 1;
}

/* Digits between blanks in [p, end), the whole of it: their value, or -1 */
static long long
number(const unsigned char *p, const unsigned char *end)
{
    while (p < end && blank(*p)) {
        p++;
    }
    const unsigned char *digits = p;
    long long value = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        value = value * 10 + (*p - '0');
        p++;
    }
    Py_ssize_t n = p - digits;
    if (n < 1 || n > 10) {
        return -1;
    }
    while (p < end && blank(*p)) {
        p++;
    }
    return p == end ? value : -1;
}

static int
args(PyObject *const *argv, Py_ssize_t argc, const unsigned char **buf, Py_ssize_t *pos,
     Py_ssize_t *head_end)
{
    if (argc != 3 || !PyBytes_CheckExact(argv[0])) {
        PyErr_SetString(PyExc_TypeError, "expected (bytes, int, int)");
        return -1;
    }
    *pos = PyLong_AsSsize_t(argv[1]);
    *head_end = PyLong_AsSsize_t(argv[2]);
    if ((*pos == -1 || *head_end == -1) && PyErr_Occurred()) {
        return -1;
    }
    *buf = (const unsigned char *)PyBytes_AS_STRING(argv[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(argv[0]);
    /* the arguments the framer passes; anything else is left to the Python path */
    if (*pos < 0 || *head_end <= *pos || *head_end + 4 > n ||
        memcmp(*buf + *head_end, "\r\n\r\n", 4) != 0) {
        return 1;
    }
    return 0;
}

/* the size, from the length value at [value_at, value_end), or -1 */
static long long
size_with(Py_ssize_t pos, Py_ssize_t head_end, const unsigned char *value_at,
          const unsigned char *value_end)
{
    long long value = number(value_at, value_end);
    return value < 0 ? -1 : (long long)(head_end + 4 - pos) + value;
}

static long long
strict(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t head_end)
{
    const unsigned char *start = buf + pos, *end = buf + head_end;
    if (memchr(start, 0, end - start) != NULL) {
        return -1;
    }
    /* the start line, in its exact case */
    const unsigned char *line_end = memchr(start, '\r', end - start);
    if (line_end == NULL) {
        line_end = end;
    }
    Py_ssize_t first = line_end - start;
    if (!((first >= 8 && memcmp(start, "SIP/2.0 ", 8) == 0) ||
          (first >= 8 && memcmp(line_end - 8, " SIP/2.0", 8) == 0))) {
        return -1;
    }
    /* a start line that Kamailio and OpenSIPS could read as a length header */
    if (lower(*start) == 'l' || (lower(*start) == 'c' && first >= 7 && iequal(start, "content", 7))) {
        return -1;
    }
    /* each CR: followed by LF, then a line that is neither folded nor (but once) a length */
    Py_ssize_t crs = 0;
    const unsigned char *length_line = NULL;
    int lengths = 0, canonical = 0;
    const unsigned char *p = line_end;
    while (p < end) {
        if (p + 1 >= end || p[1] != '\n') {
            return -1;  /* a bare CR */
        }
        crs++;
        const unsigned char *s = p + 2;
        if (blank(*s)) {
            return -1;  /* folded */
        }
        int c = lower(*s);
        if (c == 'l' && (blank(s[1]) || s[1] == ':' || s[1] == '\r')) {
            lengths++;
            length_line = s;
            canonical = s[1] == ':';
        }
        else if (c == 'c') {
            int dash = 0;
            if (content_length_name(s, end, &dash)) {
                lengths++;
                length_line = s;
                canonical = dash && s + 14 < end && s[14] == ':';
            }
        }
        p = memchr(s, '\r', end - s);
        if (p == NULL) {
            p = end;
        }
    }
    /* every LF belongs to a CRLF */
    Py_ssize_t lfs = 0;
    for (p = start; (p = memchr(p, '\n', end - p)) != NULL; p++) {
        lfs++;
    }
    if (lfs != crs || lengths != 1 || !canonical) {
        return -1;
    }
    const unsigned char *colon = memchr(length_line, ':', end - length_line);
    const unsigned char *eol = memchr(length_line, '\r', end - length_line + 1);
    return size_with(pos, head_end, colon + 1, eol);
}

static long long
lenient(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t head_end)
{
    /* every CRLF in buf[pos:head_end + 2] may begin a length header */
    const unsigned char *p = buf + pos, *region = buf + head_end + 2;
    const unsigned char *value_at = NULL, *value_end = NULL;
    int found = 0;
    while ((p = memchr(p, '\r', region - p)) != NULL) {
        const unsigned char *s = p + 2;
        if (s > region || p[1] != '\n') {
            p++;
            continue;
        }
        const unsigned char *q = NULL;
        if (region - s >= 14 && iequal(s, "content-length", 14)) {
            q = s + 14;
        }
        else if (s < region && lower(*s) == 'l') {
            q = s + 1;
        }
        if (q != NULL) {
            while (q < region && blank(*q)) {
                q++;
            }
            if (q < region && *q == ':') {
                const unsigned char *e = q + 1;
                while (e < region && *e != '\r' && *e != '\n') {
                    e++;
                }
                if (++found > 1) {
                    return -1;
                }
                value_at = q + 1;
                value_end = e;
            }
        }
        p++;
    }
    return found == 1 ? size_with(pos, head_end, value_at, value_end) : -1;
}

typedef long long (*scanner)(const unsigned char *, Py_ssize_t, Py_ssize_t);

static PyObject *
call(PyObject *const *argv, Py_ssize_t argc, scanner scan)
{
    const unsigned char *buf;
    Py_ssize_t pos, head_end;
    int bad = args(argv, argc, &buf, &pos, &head_end);
    if (bad) {
        return bad < 0 ? NULL : PyLong_FromLong(-1);
    }
    return PyLong_FromLongLong(scan(buf, pos, head_end));
}

static PyObject *
strict_size(PyObject *module, PyObject *const *argv, Py_ssize_t argc)
{
    return call(argv, argc, strict);
}

static PyObject *
lenient_size(PyObject *module, PyObject *const *argv, Py_ssize_t argc)
{
    return call(argv, argc, lenient);
}

static PyMethodDef methods[] = {
    {"strict_size", (PyCFunction)(void (*)(void))strict_size, METH_FASTCALL,
     "strict_size(buf, pos, head_end) -> the message's size, or -1: the Python path decides"},
    {"lenient_size", (PyCFunction)(void (*)(void))lenient_size, METH_FASTCALL,
     "lenient_size(buf, pos, head_end) -> the message's size, or -1: the Python path decides"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tlstrace.sip._headscan",
    "The framer's fast path for a plain SIP header section (see _headscan.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__headscan(void)
{
    return PyModule_Create(&module);
}
