/* memimg.model._speedups: the optional compiled accelerator of the two hottest paths of the model.
 *
 * Pure Python cannot make them cheap enough (docs/performance.md, "The compiled accelerator"):
 *
 * - TrackedField: the read hook of an entity field while read tracking is on. Its fast path -- the
 *   object's writer neither tracks reads nor is publishing, and some transaction is open -- reads the
 *   slot directly; anything else calls the Python descriptor's __get__ (memimg.model._tracking), so
 *   the two paths cannot disagree. hook()/unhook() give a tracked class an attribute lookup that goes
 *   straight to that fast path (a data descriptor alone costs more than the bar allows).
 * - FastSetattr: an entity's __setattr__. Its fast path is the Python one's (a field with no hook
 *   set to a scalar, the writer's `fast` journal open): one (kind, object, (name, value)) append;
 *   anything else calls the Python __setattr__ it wraps.
 *
 * Every shortcut only reads; when one does not apply, the Python code runs from the start.
 * Attributes of writers, of the tracking state and of images (_mi_current) are read through a per-type
 * cache that holds a slot offset or a class constant, checked against the type's version tag on every use.
 * A read's two questions are answered from caches too: which field a name is on a hooked class (the
 * class's version tag, as CPython's own method cache does), and whether this context's writer is quiet
 * (the quiet cache below: a context and an epoch that Python bumps with changed()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* -- configuration (configure()) ---------------------------------------------------------------- */

static PyTypeObject *base_type = NULL;   /* PersistentBase */
static Py_ssize_t owner_offset = -1;     /* its _mi_img slot */
static PyObject *state = NULL;           /* memimg.model._tracking._S */
static Py_ssize_t open_offset = -1;      /* its `open` slot (transactions open in the process) */
static PyObject *py_get = NULL;          /* the Python TrackedField.__get__: the slow path of a read */
static PyObject *s_mi_current, *s_tracks_reads, *s_publishing, *s_open, *s_fast, *s_get, *s_set;

/* -- attribute caches ----------------------------------------------------------------------------- */

/* What attribute `name` of instances of one type is: a slot (offset) or a class constant of a type
 * whose instances have no __dict__. The entry is valid while the type keeps its version tag. */
typedef struct {
    PyTypeObject *type;
    unsigned int version;
    Py_ssize_t offset;   /* >= 0: a slot */
    PyObject *constant;  /* borrowed from the type's dict (valid while the version tag holds) */
} AttrCache;

static AttrCache c_tracks = {NULL, 0, -1, NULL}, c_publishing = {NULL, 0, -1, NULL}, c_fast = {NULL, 0, -1, NULL};

/* The value (borrowed) of attribute `name` of `obj` when it is a slot or a class constant;
 * NULL with no error set when it is neither (or an empty slot): the caller takes the slow path. */
static inline PyObject *cached_attr(AttrCache *c, PyObject *obj, PyObject *name) {
    PyTypeObject *t = Py_TYPE(obj);
    if (c->type != t || c->version != t->tp_version_tag) {
        c->type = NULL;
        PyObject *d = _PyType_Lookup(t, name); /* assigns the version tag (0: none, never cached) */
        if (d == NULL || !(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || t->tp_version_tag == 0) return NULL;
        if (Py_TYPE(d) == &PyMemberDescr_Type && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
            !(((PyMemberDescrObject *)d)->d_member->flags & READONLY)) {
            c->offset = ((PyMemberDescrObject *)d)->d_member->offset;
            c->constant = NULL;
        } else if (Py_TYPE(d)->tp_descr_get == NULL && t->tp_dictoffset == 0) {
            c->offset = -1;
            c->constant = d;
        } else {
            return NULL;
        }
        c->type = t;
        c->version = t->tp_version_tag;
    }
    if (c->offset >= 0) return *(PyObject **)((char *)obj + c->offset);
    return c->constant;
}

/* 1 true, 0 false, -1 unknown (NULL, or truth raised: the slow path will say so) */
static inline int truth(PyObject *v) {
    if (v == NULL) return -1;
    if (v == Py_False || v == Py_None) return 0;
    if (v == Py_True) return 1;
    if (PyList_CheckExact(v)) return PyList_GET_SIZE(v) != 0;
#if PY_VERSION_HEX < 0x030C0000
    if (PyLong_CheckExact(v)) return Py_SIZE(v) != 0;
#endif
    Py_INCREF(v); /* borrowed from a slot that __bool__ may rebind */
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (t < 0) { PyErr_Clear(); return -1; }
    return t;
}

/* Whether `writer` neither tracks reads nor is publishing (1), or does or cannot tell (0). Its type's
 * tracks_reads must be a constant bool, resolved with its publishing once per type version. */
static struct {
    PyTypeObject *type;
    unsigned int version;
    int tracks;          /* the constant tracks_reads: 1 true, 0 false, -1 not a constant bool */
} writer_info = {NULL, 0, -1};

static inline int quiet_writer(PyObject *writer) {
    PyTypeObject *t = Py_TYPE(writer);
    if (writer_info.type != t || writer_info.version != t->tp_version_tag) {
        writer_info.type = NULL;
        PyObject *tracks = cached_attr(&c_tracks, writer, s_tracks_reads);
        if (c_tracks.type != t || c_tracks.offset >= 0 || !PyBool_Check(tracks)) return 0;
        writer_info.tracks = tracks == Py_True;
        writer_info.type = t;
        writer_info.version = c_tracks.version;
    }
    if (writer_info.tracks) return 0;
    return truth(cached_attr(&c_publishing, writer, s_publishing)) == 0;
}

/* The writer of `owner` in this context (new reference), or NULL with no error: take the slow path.
 * The owner's _mi_current is read where it is now (a slot of MemoryImage, through the per-type cache;
 * any other owner by a generic lookup): nothing here keeps an owner or its context variable alive, and
 * a rebound _mi_current is seen at once. */
static AttrCache c_current = {NULL, 0, -1, NULL};

static inline PyObject *current_writer(PyObject *owner) {
    PyObject *var = cached_attr(&c_current, owner, s_mi_current);
    if (var != NULL) {
        Py_INCREF(var);
    } else {
        var = PyObject_GetAttr(owner, s_mi_current);
        if (var == NULL) { PyErr_Clear(); return NULL; }
    }
    PyObject *writer = NULL;
    int failed = !PyContextVar_CheckExact(var) || PyContextVar_Get(var, NULL, &writer) < 0;
    Py_DECREF(var);
    if (failed) { PyErr_Clear(); return NULL; }
    return writer;
}

/* -- the quiet cache -------------------------------------------------------------------------------- */

/* Whether a read may take the slot directly -- its owner's writer in this context neither tracks reads
 * nor is publishing, and some transaction is open -- remembered per thread, so that a read in a loop
 * does not look up the context variable and the writer's attributes each time.
 *
 * An entry answers for one context variable (an image's _mi_current, compared, never dereferenced) in one
 * context of one thread: the thread state's id and context_ver (CPython bumps context_ver whenever the
 * thread enters or leaves a context: Context.run, asyncio task steps). What else the answer depends on
 * changes only where Python calls changed(), which bumps `epoch` (memimg.model._tracking.changed):
 * a transaction opening or closing anywhere (the `open` count), _mi_current set in this context (the
 * engine's begin and end: ContextVar.set leaves context_ver as it is), a new engine made (a new context
 * variable may take a freed one's address). The writer's tracks_reads is a class constant, checked with
 * its type's version tag; its publishing list (the engine's, bound once) is held and its length read on
 * every use, so a commit starting to publish is seen at once. An entry is only ever a "may read the slot": anything else is
 * found out again, by the full lookup and then the Python code. */
static uint64_t epoch = 1;

typedef struct {
    PyObject *var;          /* the context variable answered for (compared only), NULL: empty */
    uint64_t tsid, context_ver, epoch;
    PyTypeObject *wtype;    /* the writer's type (strong), its tracks_reads false at version wversion */
    unsigned int wversion;
    PyObject *publishing;   /* the writer's publishing list (strong): quiet while empty; NULL: a false constant */
} QuietEntry;

#define QUIET_ENTRIES 8 /* per thread id, modulo */
static QuietEntry quiet_cache[QUIET_ENTRIES];

/* The full lookup behind an entry of the quiet cache: 1 if the writer of `var` in this context is quiet
 * and some transaction is open (and the entry now says so), else 0. */
static int quiet_fill(QuietEntry *e, PyObject *var, PyThreadState *ts) {
    uint64_t at = epoch, tsid = ts->id, context_ver = ts->context_ver;
    PyObject *writer = NULL;
    if (!PyContextVar_CheckExact(var)) return 0;
    Py_INCREF(var);
    int failed = PyContextVar_Get(var, NULL, &writer) < 0;
    Py_DECREF(var);
    if (failed) { PyErr_Clear(); return 0; }
    if (writer == NULL) return 0; /* no value, no default: the Python code raises */
    PyTypeObject *wt = Py_TYPE(writer);
    PyObject *tracks = cached_attr(&c_tracks, writer, s_tracks_reads);
    PyObject *publishing = tracks != Py_False || c_tracks.type != wt || c_tracks.offset >= 0
                               ? NULL : cached_attr(&c_publishing, writer, s_publishing);
    int quiet = 0;
    if (publishing == NULL) {
    } else if (c_publishing.offset >= 0) {
        if (PyList_CheckExact(publishing)) quiet = 1;    /* held, its length read on each use */
    } else if (publishing == Py_False || publishing == Py_None) {
        quiet = 1;
        publishing = NULL;
    }
    if (quiet) quiet = truth(*(PyObject **)((char *)state + open_offset)) == 1;
    if (!quiet || epoch != at) { Py_DECREF(writer); return 0; }
    unsigned int wversion = c_tracks.version;
    PyObject *old_type = (PyObject *)e->wtype, *old_publishing = e->publishing;
    Py_INCREF(wt);
    Py_XINCREF(publishing);
    e->var = var;
    e->tsid = tsid;
    e->context_ver = context_ver;
    e->epoch = at;
    e->wtype = wt;
    e->wversion = wversion;
    e->publishing = publishing;
    Py_DECREF(writer);
    Py_XDECREF(old_type);
    Py_XDECREF(old_publishing); /* may run Python code (a finalizer): the epoch says if it changed anything */
    return epoch == at && (publishing == NULL || PyList_GET_SIZE(publishing) == 0);
}

/* Whether a read of a field of `obj` (an entity) may take the slot directly: 1 or 0 from the quiet cache
 * with no other lookup, -1 when it does not tell (may_read_slot finds out). Runs no Python code. */
static inline int quiet_hit(PyObject *obj) {
    PyObject *owner = *(PyObject **)((char *)obj + owner_offset);
    if (owner == NULL) return 0;
    PyTypeObject *t = Py_TYPE(owner);
    if (owner == Py_None || c_current.type != t || c_current.version != t->tp_version_tag) return -1;
    PyObject *var = c_current.offset >= 0 ? *(PyObject **)((char *)owner + c_current.offset) : c_current.constant;
    PyThreadState *ts = PyThreadState_Get();
    QuietEntry *e = &quiet_cache[ts->id % QUIET_ENTRIES];
    if (var == NULL || e->var != var || e->epoch != epoch || e->tsid != ts->id || e->context_ver != ts->context_ver ||
        e->wtype->tp_version_tag != e->wversion)
        return -1;
    return e->publishing == NULL || PyList_GET_SIZE(e->publishing) == 0;
}

/* Whether a read of a field of `obj` (an entity) may take the slot directly (may run Python code). */
static int may_read_slot(PyObject *obj) {
    int hit = quiet_hit(obj);
    if (hit >= 0) return hit;
    PyObject *owner = *(PyObject **)((char *)obj + owner_offset);
    if (owner == Py_None) return truth(*(PyObject **)((char *)state + open_offset)) == 1;
    PyObject *var = cached_attr(&c_current, owner, s_mi_current);
    if (var == NULL) { /* an owner whose _mi_current is not a slot or a class constant: no cache */
        PyObject *writer = current_writer(owner);
        if (writer == NULL) return 0;
        int quiet = quiet_writer(writer);
        Py_DECREF(writer);
        return quiet && truth(*(PyObject **)((char *)state + open_offset)) == 1;
    }
    PyThreadState *ts = PyThreadState_Get();
    return quiet_fill(&quiet_cache[ts->id % QUIET_ENTRIES], var, ts);
}

static PyObject *changed(PyObject *mod, PyObject *unused) {
    epoch++;
    Py_RETURN_NONE;
}

/* -- TrackedField ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *name, *slot, *get, *set;
} TrackedField;

static PyTypeObject TrackedFieldType;

static int tf_init(TrackedField *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "slot", NULL};
    PyObject *name, *slot;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UO:TrackedField", kwlist, &name, &slot)) return -1;
    if (Py_TYPE(slot) != &PyMemberDescr_Type || ((PyMemberDescrObject *)slot)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "TrackedField %R: %R is not an object slot (member descriptor)", name, slot);
        return -1;
    }
    PyObject *get = PyObject_GetAttr(slot, s_get);
    if (get == NULL) return -1;
    PyObject *set = PyObject_GetAttr(slot, s_set);
    if (set == NULL) { Py_DECREF(get); return -1; }
    Py_INCREF(name);
    Py_INCREF(slot);
    Py_XSETREF(self->name, name);
    Py_XSETREF(self->slot, slot);
    Py_XSETREF(self->get, get);
    Py_XSETREF(self->set, set);
    return 0;
}

static int tf_traverse(TrackedField *self, visitproc visit, void *arg) {
    Py_VISIT(self->name);
    Py_VISIT(self->slot);
    Py_VISIT(self->get);
    Py_VISIT(self->set);
    return 0;
}

static int tf_clear(TrackedField *self) {
    Py_CLEAR(self->name);
    Py_CLEAR(self->slot);
    Py_CLEAR(self->get);
    Py_CLEAR(self->set);
    return 0;
}

static void tf_dealloc(TrackedField *self) {
    PyObject_GC_UnTrack(self);
    tf_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *tf_slow(TrackedField *self, PyObject *obj, PyObject *cls) {
    if (py_get == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memimg.model._speedups is not configured");
        return NULL;
    }
    PyObject *args[3] = {(PyObject *)self, obj, cls != NULL ? cls : Py_None};
    return PyObject_Vectorcall(py_get, args, 3, NULL);
}

/* Whether the fast path may read `obj` through `self`: configured, an entity holding the slot. */
static inline int holds_slot(TrackedField *self, PyObject *obj) {
    return self->slot != NULL && PyObject_TypeCheck(obj, PyDescr_TYPE(self->slot));
}
static inline int fast_ok(TrackedField *self, PyObject *obj) {
    return base_type != NULL && PyObject_TypeCheck(obj, base_type) && holds_slot(self, obj);
}

/* A read of `obj` through `self` (fast_ok). */
static PyObject *tf_fast(TrackedField *self, PyObject *obj, PyObject *cls) {
    if (may_read_slot(obj)) {
        PyObject *value = *(PyObject **)((char *)obj + ((PyMemberDescrObject *)self->slot)->d_member->offset);
        if (value != NULL) return Py_NewRef(value); /* else the slot's own AttributeError */
    }
    return tf_slow(self, obj, cls);
}

static PyObject *tf_descr_get(TrackedField *self, PyObject *obj, PyObject *cls) {
    if (self->slot == NULL) {
        PyErr_SetString(PyExc_TypeError, "TrackedField was not initialised");
        return NULL;
    }
    if (obj == NULL || obj == Py_None) return Py_NewRef(self->slot);
    return fast_ok(self, obj) ? tf_fast(self, obj, cls) : tf_slow(self, obj, cls);
}

static int tf_descr_set(TrackedField *self, PyObject *obj, PyObject *value) {
    if (self->slot == NULL) {
        PyErr_SetString(PyExc_TypeError, "TrackedField was not initialised");
        return -1;
    }
    return Py_TYPE(self->slot)->tp_descr_set(self->slot, obj, value); /* value NULL: delete */
}

static PyMemberDef tf_members[] = {
    {"name", T_OBJECT, offsetof(TrackedField, name), READONLY, "the field's name"},
    {"slot", T_OBJECT, offsetof(TrackedField, slot), READONLY, "the member descriptor that stores the field"},
    {"get", T_OBJECT, offsetof(TrackedField, get), READONLY, "slot.__get__"},
    {"set", T_OBJECT, offsetof(TrackedField, set), READONLY, "slot.__set__"},
    {NULL},
};

static PyTypeObject TrackedFieldType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "memimg.model._speedups.TrackedField",
    .tp_doc = "The read hook of an entity field while tracking is on (compiled fast path).",
    .tp_basicsize = sizeof(TrackedField),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tf_init,
    .tp_dealloc = (destructor)tf_dealloc,
    .tp_traverse = (traverseproc)tf_traverse,
    .tp_clear = (inquiry)tf_clear,
    .tp_descr_get = (descrgetfunc)tf_descr_get,
    .tp_descr_set = (descrsetfunc)tf_descr_set,
    .tp_members = tf_members,
};

/* Which tracked field (borrowed) a name is on a hooked class, or NULL: a small cache in front of
 * _PyType_Lookup, keyed like CPython's own by the type's version tag (unique, and reset when the type or
 * a base changes, so the field found is still in the class's dict) and the name (held). */
#define FIELD_ENTRIES 256
static struct {
    unsigned int version;
    PyObject *name;
    TrackedField *field;
} field_cache[FIELD_ENTRIES];

static inline TrackedField *tracked_field(PyTypeObject *t, PyObject *name) {
    unsigned int version = t->tp_version_tag;
    size_t i = (((uintptr_t)name >> 4) ^ version) % FIELD_ENTRIES;
    if (field_cache[i].name == name && field_cache[i].version == version && version != 0) return field_cache[i].field;
    PyObject *d = _PyType_Lookup(t, name); /* assigns the version tag if it can */
    TrackedField *f = d != NULL && Py_TYPE(d) == &TrackedFieldType ? (TrackedField *)d : NULL;
    if ((t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && t->tp_version_tag != 0 && PyUnicode_CheckExact(name)) {
        PyObject *old = field_cache[i].name;
        field_cache[i].version = t->tp_version_tag;
        field_cache[i].name = Py_NewRef(name);
        field_cache[i].field = f;
        Py_XDECREF(old); /* a str: runs no Python code */
    }
    return f;
}

/* The attribute lookup of a hooked class (an entity class: hook() checks): a tracked field's read with no
 * generic lookup around it. tracked_getattro is the common case, from the caches alone and calling
 * nothing but PyThreadState_Get; a read the quiet cache does not answer goes on in field_rest (the full
 * lookup, then the Python code), a name the field cache does not know in getattro_rest. */
static Py_NO_INLINE PyObject *field_rest(TrackedField *f, PyObject *obj) {
    Py_INCREF(f); /* the class may lose it while the read runs Python code */
    PyObject *r = tf_fast(f, obj, (PyObject *)Py_TYPE(obj));
    Py_DECREF(f);
    return r;
}

static Py_NO_INLINE PyObject *getattro_rest(PyObject *obj, PyObject *name) {
    TrackedField *f = tracked_field(Py_TYPE(obj), name);
    if (f == NULL || !holds_slot(f, obj)) return PyObject_GenericGetAttr(obj, name);
    return field_rest(f, obj);
}

static PyObject *tracked_getattro(PyObject *obj, PyObject *name) {
    unsigned int version = Py_TYPE(obj)->tp_version_tag;
    size_t i = (((uintptr_t)name >> 4) ^ version) % FIELD_ENTRIES;
    if (field_cache[i].name == name && field_cache[i].version == version && version != 0) {
        TrackedField *f = field_cache[i].field;
        if (f == NULL || !holds_slot(f, obj)) return PyObject_GenericGetAttr(obj, name); /* a method, say */
        if (quiet_hit(obj) == 1) { /* runs no Python code: f stays in the class meanwhile */
            PyObject *value = *(PyObject **)((char *)obj + ((PyMemberDescrObject *)f->slot)->d_member->offset);
            if (value != NULL) return Py_NewRef(value);
        }
        return field_rest(f, obj);
    }
    return getattro_rest(obj, name);
}

static PyObject *hook(PyObject *mod, PyObject *cls) {
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "hook() needs a class, not %R", cls);
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (t->tp_getattro == tracked_getattro) Py_RETURN_TRUE; /* inherited from a hooked base */
    if (base_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memimg.model._speedups is not configured");
        return NULL;
    }
    if (t->tp_getattro != PyObject_GenericGetAttr || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE) ||
        !PyType_IsSubtype(t, base_type))
        Py_RETURN_FALSE;
    t->tp_getattro = tracked_getattro;
    PyType_Modified(t);
    Py_RETURN_TRUE;
}

static PyObject *unhook(PyObject *mod, PyObject *cls) {
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "unhook() needs a class, not %R", cls);
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (t->tp_getattro != tracked_getattro) Py_RETURN_FALSE;
    t->tp_getattro = PyObject_GenericGetAttr;
    PyType_Modified(t);
    Py_RETURN_TRUE;
}

/* -- FastSetattr ---------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *plain, *kind, *scalars, *slow;
    vectorcallfunc vectorcall;
} FastSetattr;

static PyObject *fs_call(FastSetattr *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL || base_type == NULL) goto slow;
    PyObject *obj = args[0], *name = args[1], *value = args[2];
    if (!PyUnicode_CheckExact(name) || !PyObject_TypeCheck(obj, base_type)) goto slow;
    PyObject *owner = *(PyObject **)((char *)obj + owner_offset);
    if (owner == NULL || owner == Py_None) goto slow;
    int plain = PySet_Contains(self->plain, name);
    if (plain <= 0) { if (plain < 0) PyErr_Clear(); goto slow; }
    PyTypeObject *vt = Py_TYPE(value);
    if (vt == &PyUnicode_Type) {
        if (!PyUnicode_IS_ASCII(value)) goto slow;
    } else {
        int scalar = PySet_Contains(self->scalars, (PyObject *)vt);
        if (scalar <= 0) { if (scalar < 0) PyErr_Clear(); goto slow; }
    }
    PyObject *writer = current_writer(owner);
    if (writer == NULL) goto slow;
    PyObject *journal = cached_attr(&c_fast, writer, s_fast);
    if (journal == NULL || !PyList_CheckExact(journal)) { Py_DECREF(writer); goto slow; }
    Py_INCREF(journal);
    Py_DECREF(writer);
    PyObject *pair = PyTuple_Pack(2, name, value);
    PyObject *entry = pair == NULL ? NULL : PyTuple_Pack(3, self->kind, obj, pair);
    Py_XDECREF(pair);
    /* the whole (kind, object, (name, value)) entry in one step: a failure leaves the journal as it was */
    Py_ssize_t n = PyList_GET_SIZE(journal);
    int failed = entry == NULL || PyList_SetSlice(journal, n, n, entry) < 0;
    Py_XDECREF(entry);
    Py_DECREF(journal);
    if (failed) return NULL;
    Py_RETURN_NONE;
slow:
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static int fs_init(FastSetattr *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"plain", "kind", "scalars", "slow", NULL};
    PyObject *plain, *kind, *scalars, *slow;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO!O:FastSetattr", kwlist, &PyFrozenSet_Type, &plain, &kind,
                                     &PyFrozenSet_Type, &scalars, &slow))
        return -1;
    if (!PyCallable_Check(slow)) {
        PyErr_Format(PyExc_TypeError, "FastSetattr: slow must be callable, not %R", slow);
        return -1;
    }
    Py_INCREF(plain);
    Py_INCREF(kind);
    Py_INCREF(scalars);
    Py_INCREF(slow);
    Py_XSETREF(self->plain, plain);
    Py_XSETREF(self->kind, kind);
    Py_XSETREF(self->scalars, scalars);
    Py_XSETREF(self->slow, slow);
    self->vectorcall = (vectorcallfunc)fs_call;
    return 0;
}

static PyObject *fs_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    FastSetattr *self = (FastSetattr *)type->tp_alloc(type, 0);
    if (self != NULL) self->vectorcall = NULL;
    return (PyObject *)self;
}

static PyObject *fs_tp_call(FastSetattr *self, PyObject *args, PyObject *kwds) {
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_TypeError, "FastSetattr was not initialised");
        return NULL;
    }
    return PyVectorcall_Call((PyObject *)self, args, kwds);
}

static int fs_traverse(FastSetattr *self, visitproc visit, void *arg) {
    Py_VISIT(self->plain);
    Py_VISIT(self->kind);
    Py_VISIT(self->scalars);
    Py_VISIT(self->slow);
    return 0;
}

static int fs_clear(FastSetattr *self) {
    Py_CLEAR(self->plain);
    Py_CLEAR(self->kind);
    Py_CLEAR(self->scalars);
    Py_CLEAR(self->slow);
    return 0;
}

static void fs_dealloc(FastSetattr *self) {
    PyObject_GC_UnTrack(self);
    fs_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *fs_descr_get(PyObject *self, PyObject *obj, PyObject *cls) {
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* The wrapped Python __setattr__'s name, docs and signature (inspect.signature follows __wrapped__). */
static PyObject *fs_slow_attr(FastSetattr *self, void *name) {
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_TypeError, "FastSetattr was not initialised");
        return NULL;
    }
    return PyObject_GetAttrString(self->slow, (const char *)name);
}

static PyObject *fs_wrapped(FastSetattr *self, void *unused) {
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_TypeError, "FastSetattr was not initialised");
        return NULL;
    }
    return Py_NewRef(self->slow);
}

static PyGetSetDef fs_getset[] = {
    {"__name__", (getter)fs_slow_attr, NULL, "the wrapped __setattr__'s name", "__name__"},
    {"__qualname__", (getter)fs_slow_attr, NULL, "the wrapped __setattr__'s qualified name", "__qualname__"},
    {"__module__", (getter)fs_slow_attr, NULL, "the wrapped __setattr__'s module", "__module__"},
    {"__doc__", (getter)fs_slow_attr, NULL, "the wrapped __setattr__'s docstring", "__doc__"},
    {"__wrapped__", (getter)fs_wrapped, NULL, "the wrapped __setattr__ (slow)", NULL},
    {NULL},
};

static PyMemberDef fs_members[] = {
    {"slow", T_OBJECT, offsetof(FastSetattr, slow), READONLY, "the Python __setattr__ (everything off the fast path)"},
    {NULL},
};

static PyTypeObject FastSetattrType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "memimg.model._speedups.FastSetattr",
    .tp_doc = "An entity's __setattr__: the journal fast path compiled, the rest in Python (slow).",
    .tp_basicsize = sizeof(FastSetattr),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(FastSetattr, vectorcall),
    .tp_call = (ternaryfunc)fs_tp_call,
    .tp_new = fs_new,
    .tp_init = (initproc)fs_init,
    .tp_dealloc = (destructor)fs_dealloc,
    .tp_traverse = (traverseproc)fs_traverse,
    .tp_clear = (inquiry)fs_clear,
    .tp_descr_get = fs_descr_get,
    .tp_members = fs_members,
    .tp_getset = fs_getset,
};

/* -- module ----------------------------------------------------------------------------------------- */

static PyObject *configure(PyObject *mod, PyObject *args) {
    PyObject *base, *st, *get;
    if (!PyArg_ParseTuple(args, "O!OO:configure", &PyType_Type, &base, &st, &get)) return NULL;
    PyObject *d = PyDict_GetItemString(((PyTypeObject *)base)->tp_dict, "_mi_img");
    if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "configure(): %R has no _mi_img slot", base);
        return NULL;
    }
    if (!PyCallable_Check(get)) {
        PyErr_Format(PyExc_TypeError, "configure(): %R is not callable", get);
        return NULL;
    }
    PyObject *o = _PyType_Lookup(Py_TYPE(st), s_open);
    if (o == NULL || Py_TYPE(o) != &PyMemberDescr_Type || ((PyMemberDescrObject *)o)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "configure(): %R has no `open` slot", st);
        return NULL;
    }
    open_offset = ((PyMemberDescrObject *)o)->d_member->offset;
    owner_offset = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_INCREF(base);
    Py_XSETREF(base_type, (PyTypeObject *)base);
    Py_INCREF(st);
    Py_XSETREF(state, st);
    Py_INCREF(get);
    Py_XSETREF(py_get, get);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(PersistentBase, tracking_state, python_get)"},
    {"hook", hook, METH_O, "Give a class the tracked attribute lookup (if it has the generic one): whether it has it."},
    {"unhook", unhook, METH_O, "Give a hooked class its generic attribute lookup back: whether it was hooked."},
    {"changed", changed, METH_NOARGS, "Forget every cached answer of whether a context's writer is quiet."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "memimg.model._speedups",
                                    "The optional compiled accelerator of memimg's model.", -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;
    INTERN(s_mi_current, "_mi_current")
    INTERN(s_tracks_reads, "tracks_reads")
    INTERN(s_publishing, "publishing")
    INTERN(s_open, "open")
    INTERN(s_fast, "fast")
    INTERN(s_get, "__get__")
    INTERN(s_set, "__set__")
#undef INTERN
    if (PyType_Ready(&TrackedFieldType) < 0 || PyType_Ready(&FastSetattrType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "TrackedField", (PyObject *)&TrackedFieldType) < 0 ||
        PyModule_AddObjectRef(m, "FastSetattr", (PyObject *)&FastSetattrType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
