/* chunkkeys.c - kvdm.native._chunkkeys: the token layer's per-prompt entry point, as a CPython
 * extension (numpy's C API) rather than a cffi call.
 *
 * Why not cffi: at 1k tokens the hash itself (chunkhash.c) is ~1.7 us, and the cffi route around
 * it (two ffi.from_buffer, np.empty, a 14-argument call, the Python checks) cost ~2 us more, so
 * a prompt took longer than hashlib.sha256 over the same bytes. Here one METH_O call checks the
 * input's type, dtype, rank, layout and byte order in C (struct reads), allocates the key array
 * and runs kvdm_prompt_keys: ~0.1 us around the hash.
 *
 * It is a fast path only, with no opinion of its own: it returns None for anything that is not
 * plainly valid (another type, a strided or byte-swapped array, an id out of range, ...), and
 * the caller (index/tokens.py, ChunkKeys.keys) then takes its Python path, which accepts the
 * other forms and raises the errors. The hash has one source, native/chunkhash.c, compiled
 * into this module as into the cffi one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <stdlib.h>

#include "chunkhash.h"

/* hash without the GIL from this many tokens on (~12 us); below it the release costs more than
 * another thread could gain */
#define RELEASE_GIL_TOKENS 8192
#define LIST_STACK_TOKENS 4096 /* lists up to this long are converted on the stack */

typedef struct {
    PyObject_HEAD
    int scheme;
    int partial;
    int key_bytes;
    int accel;
    size_t chunk;
    uint8_t seed[32];
} Keyer;

static int keyer_init(Keyer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"scheme", "seed", "chunk", "partial", "key_bytes", "accel", NULL};
    int scheme, partial, key_bytes, accel;
    Py_ssize_t chunk;
    Py_buffer seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*npip", kwlist, &scheme, &seed, &chunk, &partial, &key_bytes,
                                     &accel))
        return -1;
    int ok = seed.len == 32;
    if (ok) memcpy(self->seed, seed.buf, 32);
    PyBuffer_Release(&seed);
    if (!ok || chunk < 1 || (key_bytes != 8 && key_bytes != 32) ||
        (scheme != KVDM_CHUNK_SHA256 && scheme != KVDM_CHUNK_VLLM) ||
        (scheme == KVDM_CHUNK_VLLM && chunk > KVDM_CHUNK_VLLM_MAX)) {
        PyErr_SetString(PyExc_ValueError, "Keyer: a 32-byte seed, chunk >= 1 (vLLM: <= KVDM_CHUNK_VLLM_MAX), "
                                          "key_bytes 8 or 32 and a known scheme");
        return -1;
    }
    self->scheme = scheme;
    self->partial = partial;
    self->key_bytes = key_bytes;
    self->accel = accel; /* only where kvdm_chunk_accel() said 1: the caller asks it once (a CPUID trap) */
    self->chunk = (size_t)chunk;
    return 0;
}

/* The key array of a prompt of n_tokens: uint8[n, 32] or uint64[n]. */
static PyArrayObject *new_keys(const Keyer *self, size_t n_tokens, size_t *n_chunks) {
    size_t n = kvdm_chunk_count(n_tokens, self->chunk, self->partial);
    npy_intp dims[2] = {(npy_intp)n, 32};
    *n_chunks = n;
    if (self->key_bytes == 32) return (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_UINT8);
    return (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_UINT64);
}

/* Hash n_tokens ids of elem_bytes (signed or not) at data into a new key array: the array, or
 * None when an id lies outside [0, 2^32) (the caller's Python path says which), or NULL with
 * an exception. */
static PyObject *hash_into_new(const Keyer *self, const void *data, int elem_bytes, int is_signed, size_t n_tokens) {
    size_t n;
    PyArrayObject *out = new_keys(self, n_tokens, &n);
    if (!out) return NULL;
    int64_t bad, rc;
    uint8_t *dst = (uint8_t *)PyArray_DATA(out);
    if (n_tokens >= RELEASE_GIL_TOKENS) {
        Py_BEGIN_ALLOW_THREADS;
        rc = kvdm_prompt_keys(self->scheme, self->seed, 32, data, elem_bytes, is_signed, n_tokens, self->chunk,
                              self->partial, self->key_bytes, self->accel, dst, n, &bad);
        Py_END_ALLOW_THREADS;
    } else {
        rc = kvdm_prompt_keys(self->scheme, self->seed, 32, data, elem_bytes, is_signed, n_tokens, self->chunk,
                              self->partial, self->key_bytes, self->accel, dst, n, &bad);
    }
    if (rc == (int64_t)n) return (PyObject *)out;
    Py_DECREF(out);
    if (rc == -3) Py_RETURN_NONE;
    if (rc == -4) return PyErr_NoMemory();
    return PyErr_Format(PyExc_RuntimeError, "kvdm_prompt_keys failed (%lld) for a prompt of %zu tokens",
                        (long long)rc, n_tokens);
}

/* An exact int's value when it lies in [0, 2^32): 1 and *out, else 0. Ids below 2^30 (every
 * vocabulary) are one-digit ints, read in place: ~1 ns an id, not the ~2 ns of
 * PyLong_AsUnsignedLongLong, which is where a list's time went. */
static inline int long_u32(PyObject *v, uint32_t *out) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)v)) {
        Py_ssize_t x = PyUnstable_Long_CompactValue((PyLongObject *)v);
        *out = (uint32_t)x;
        return x >= 0;
    }
#else
    Py_ssize_t size = Py_SIZE(v); /* the digit count, negative for a negative int */
    if (size == 0 || size == 1) {
        *out = size ? (uint32_t)((PyLongObject *)v)->ob_digit[0] : 0;
        return 1;
    }
    if (size < 0) return 0;
#endif
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) { /* over 64 bits */
        PyErr_Clear();
        return 0;
    }
    *out = (uint32_t)x;
    return !(x >> 32);
}

/* For an exact int v: whether it has at most one digit and is not negative (0 <= v < 2^30),
 * and then its value in *out; no branch, so that four run in one. */
static inline int small_u32(PyObject *v, uint32_t *out) {
#if PY_VERSION_HEX >= 0x030C0000
    Py_ssize_t x = PyUnstable_Long_IsCompact((PyLongObject *)v) ? PyUnstable_Long_CompactValue((PyLongObject *)v) : -1;
    *out = (uint32_t)x;
    return x >= 0;
#else
    Py_ssize_t size = Py_SIZE(v); /* the digit count, negative for a negative int; 0 still has a digit */
    *out = (uint32_t)((PyLongObject *)v)->ob_digit[0] & (uint32_t)-(size != 0);
    return (size_t)size <= 1;
#endif
}

/* A list or tuple of exact ints in [0, 2^32): its ids as uint32 (native order) in buf, else 0.
 * Four ids a step, two tests (the ~1 ns per id is the list's whole extra cost). */
static int seq_to_u32(PyObject *seq, Py_ssize_t n, uint32_t *buf) {
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        PyObject *a = items[i], *b = items[i + 1], *c = items[i + 2], *d = items[i + 3];
        if (!(PyLong_CheckExact(a) & PyLong_CheckExact(b) & PyLong_CheckExact(c) & PyLong_CheckExact(d))) break;
        if (!(small_u32(a, &buf[i]) & small_u32(b, &buf[i + 1]) & small_u32(c, &buf[i + 2]) &
              small_u32(d, &buf[i + 3])))
            break; /* one of the four is larger, negative or not an int: one at a time from here */
    }
    for (; i < n; i++)
        if (!PyLong_CheckExact(items[i]) || !long_u32(items[i], &buf[i])) return 0;
    return 1;
}

static PyObject *keys_of_sequence(const Keyer *self, PyObject *seq) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint32_t stack[LIST_STACK_TOKENS];
    uint32_t *buf = n <= LIST_STACK_TOKENS ? stack : PyMem_Malloc(sizeof(uint32_t) * (size_t)n);
    if (!buf) return PyErr_NoMemory();
    PyObject *res = seq_to_u32(seq, n, buf) ? hash_into_new(self, buf, 4, 0, (size_t)n) : (Py_INCREF(Py_None), Py_None);
    if (buf != stack) PyMem_Free(buf);
    return res;
}

/* --- torch tensors: what Tensor.numpy() would see, read through the tensor's own getters ---
 * (t.numpy() alone costs ~0.7 us, as much as the Python checks around it). Known once
 * use_torch() has named torch.Tensor and its integer dtypes: kvdm never imports torch itself. */

static PyObject *tensor_type; /* torch.Tensor (exact type only: subclasses take the Python path) */
#define MAX_TORCH_INTS 16
static struct {
    PyObject *dtype;
    int elem_bytes, is_signed;
} torch_ints[MAX_TORCH_INTS];
static int n_torch_ints;

/* What keys_of_tensor asks a tensor: three attributes, then three methods without arguments.
 * Called through torch.Tensor's own descriptors where they are the usual kinds (a getset, a
 * method descriptor): no attribute lookup per call, which is most of a cold call's cost;
 * otherwise by name. */
enum { T_DTYPE, T_IS_CPU, T_SHAPE, T_IS_CONTIGUOUS, T_IS_NEG, T_DATA_PTR, T_N };
#define T_FIRST_METHOD T_IS_CONTIGUOUS
static const char *const tensor_names[T_N] = {"dtype", "is_cpu", "shape", "is_contiguous", "is_neg", "data_ptr"};
static PyObject *tensor_name[T_N], *tensor_descr[T_N]; /* interned names; descriptors or NULL */

static PyObject *tensor_get(int what, PyObject *t) {
    PyObject *d = tensor_descr[what];
    if (what < T_FIRST_METHOD)
        return d ? Py_TYPE(d)->tp_descr_get(d, t, (PyObject *)Py_TYPE(t)) : PyObject_GetAttr(t, tensor_name[what]);
    return d ? PyObject_Vectorcall(d, &t, 1, NULL) : PyObject_CallMethodNoArgs(t, tensor_name[what]);
}

/* 1 when what t answers is True, 0 when False, -1 otherwise (an error, cleared by the caller) */
static int tensor_bool(int what, PyObject *t) {
    PyObject *r = tensor_get(what, t);
    int v = r == Py_True ? 1 : r == Py_False ? 0 : -1;
    Py_XDECREF(r);
    return v;
}

static PyObject *keys_of_tensor(const Keyer *self, PyObject *t) {
    PyObject *dtype = tensor_get(T_DTYPE, t);
    if (!dtype) goto python_path;
    int k = 0;
    while (k < n_torch_ints && torch_ints[k].dtype != dtype) k++;
    Py_DECREF(dtype);
    if (k == n_torch_ints) Py_RETURN_NONE; /* not an integer dtype kvdm reads */
    if (tensor_bool(T_IS_CPU, t) != 1) goto python_path; /* CUDA: copied to the host there */
    PyObject *shape = tensor_get(T_SHAPE, t);
    if (!shape) goto python_path;
    Py_ssize_t n = PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == 1 ? PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, 0))
                                                                        : -1;
    Py_DECREF(shape);
    /* a 1-d strided tensor, contiguous, without the negative bit (numpy() refuses one) */
    if (n < 0 || tensor_bool(T_IS_CONTIGUOUS, t) != 1 || tensor_bool(T_IS_NEG, t) != 0) goto python_path;
    PyObject *ptr = tensor_get(T_DATA_PTR, t);
    if (!ptr) goto python_path;
    void *data = PyLong_AsVoidPtr(ptr);
    Py_DECREF(ptr);
    if ((!data && n) || PyErr_Occurred()) goto python_path;
    return hash_into_new(self, data, torch_ints[k].elem_bytes, torch_ints[k].is_signed, (size_t)n);
python_path:
    PyErr_Clear();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(use_torch_doc, "use_torch(tensor_type, int_dtypes) -> None\n\n"
                            "Name torch.Tensor and its integer dtypes ({dtype: (elem_bytes, is_signed)}) so that\n"
                            "Keyer.keys reads CPU tensors directly.");

static PyObject *use_torch(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyType_Check(args[0]) || !PyDict_Check(args[1]) || PyDict_GET_SIZE(args[1]) > MAX_TORCH_INTS)
        return PyErr_Format(PyExc_TypeError, "use_torch(tensor_type, {dtype: (elem_bytes, is_signed)}), at most %d",
                            MAX_TORCH_INTS);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(args[1], &pos, &key, &value)) { /* check all before changing anything */
        int elem, is_signed;
        if (!PyArg_ParseTuple(value, "ip", &elem, &is_signed)) return NULL;
        if (elem != 1 && elem != 2 && elem != 4 && elem != 8)
            return PyErr_Format(PyExc_ValueError, "use_torch: elem_bytes %d", elem);
    }
    for (int i = 0; i < T_N; i++) { /* the descriptors of the usual kinds, else by name */
        PyObject *d = PyObject_GetAttr(args[0], tensor_name[i]);
        if (!d) return NULL;
        if (!PyObject_TypeCheck(d, i < T_FIRST_METHOD ? &PyGetSetDescr_Type : &PyMethodDescr_Type)) Py_CLEAR(d);
        Py_XSETREF(tensor_descr[i], d);
    }
    for (int i = 0; i < n_torch_ints; i++) Py_CLEAR(torch_ints[i].dtype);
    n_torch_ints = 0;
    for (pos = 0; PyDict_Next(args[1], &pos, &key, &value); n_torch_ints++) {
        Py_INCREF(key);
        torch_ints[n_torch_ints].dtype = key;
        PyArg_ParseTuple(value, "ip", &torch_ints[n_torch_ints].elem_bytes, &torch_ints[n_torch_ints].is_signed);
    }
    Py_INCREF(args[0]);
    Py_XSETREF(tensor_type, args[0]);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(keys_doc, "keys(tokens) -> the chunk keys, or None where the Python path must decide\n\n"
                       "Takes, with every id in [0, 2**32): a 1-d C-contiguous aligned native-order integer numpy\n"
                       "array (exact ndarray); a list or tuple of ints; a 1-d contiguous CPU torch.Tensor of an\n"
                       "integer dtype (after use_torch). None for anything else.");

static PyObject *keyer_keys(Keyer *self, PyObject *tokens) {
    if (PyArray_CheckExact(tokens)) {
        PyArrayObject *a = (PyArrayObject *)tokens;
        int elem = (int)PyArray_ITEMSIZE(a);
        if (PyArray_NDIM(a) != 1 || !PyArray_ISINTEGER(a) || !PyArray_ISCARRAY_RO(a) || !PyArray_ISNOTSWAPPED(a) ||
            (elem != 1 && elem != 2 && elem != 4 && elem != 8))
            Py_RETURN_NONE;
        return hash_into_new(self, PyArray_DATA(a), elem, PyArray_ISSIGNED(a), (size_t)PyArray_DIM(a, 0));
    }
    if ((PyObject *)Py_TYPE(tokens) == tensor_type) return keys_of_tensor(self, tokens);
    if (PyList_CheckExact(tokens) || PyTuple_CheckExact(tokens)) return keys_of_sequence(self, tokens);
    Py_RETURN_NONE;
}

static PyMethodDef keyer_methods[] = {
    {"keys", (PyCFunction)keyer_keys, METH_O, keys_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef module_methods[] = {
    {"use_torch", (PyCFunction)(void (*)(void))use_torch, METH_FASTCALL, use_torch_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KeyerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kvdm.native._chunkkeys.Keyer",
    .tp_doc = PyDoc_STR("Keyer(scheme, seed, chunk, partial, key_bytes, accel): one ChunkKeys' parameters, "
                        "and its prompts' keys in one C call (native/chunkhash.c)"),
    .tp_basicsize = sizeof(Keyer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)keyer_init,
    .tp_methods = keyer_methods,
};

static struct PyModuleDef chunkkeys_module = {
    PyModuleDef_HEAD_INIT, .m_name = "kvdm.native._chunkkeys",
    .m_doc = "The token layer's chunk keys per prompt in one call (see native/pyext/chunkkeys.c).", .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__chunkkeys(void) {
    import_array();
    for (int i = 0; i < T_N; i++)
        if (!(tensor_name[i] = PyUnicode_InternFromString(tensor_names[i]))) return NULL;
    if (PyType_Ready(&KeyerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&chunkkeys_module);
    if (!m) return NULL;
    Py_INCREF(&KeyerType);
    if (PyModule_AddObject(m, "Keyer", (PyObject *)&KeyerType) < 0) {
        Py_DECREF(&KeyerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
