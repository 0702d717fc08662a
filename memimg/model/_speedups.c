/* memimg.model._speedups: the optional compiled accelerator of the hottest paths of the model and of change feeds.
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
 * - Change feeds (memimg.image._feeds): first_noted, note_field and deliver_to_bound, the Python functions of the
 *   same names compiled -- the steps a subscription adds to the commonest commit (one field set), where the
 *   interpreter's work was most of their cost. note_field calls the Python function for anything but a field
 *   followed by a subscription to its object or to that field.
 *
 * Every shortcut only reads; when one does not apply, the Python code runs from the start.
 * Attributes of writers, of the tracking state and of images (_mi_current) are read through a per-type
 * cache that holds a slot offset or a class constant, checked against the type's version tag on every use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* What memimg.model._accel expects (its SPEEDUPS_VERSION): bumped whenever the module's functions change, so that a
 * build older than the Python code is not used (an editable install keeps the built file in the source tree). */
#define SPEEDUPS_VERSION 2

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
    PyObject *owner = *(PyObject **)((char *)obj + owner_offset);
    if (owner == NULL) return tf_slow(self, obj, cls);
    if (owner != Py_None) {
        PyObject *writer = current_writer(owner);
        if (writer == NULL) return tf_slow(self, obj, cls);
        int quiet = quiet_writer(writer);
        Py_DECREF(writer);
        if (!quiet) return tf_slow(self, obj, cls);
    }
    if (truth(*(PyObject **)((char *)state + open_offset)) != 1) return tf_slow(self, obj, cls); /* idle reads count */
    PyObject *value = *(PyObject **)((char *)obj + ((PyMemberDescrObject *)self->slot)->d_member->offset);
    if (value == NULL) return tf_slow(self, obj, cls); /* the slot's own AttributeError */
    Py_INCREF(value);
    return value;
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

/* The attribute lookup of a hooked class (an entity class: hook() checks): a tracked field's read with no
 * generic lookup around it. */
static PyObject *tracked_getattro(PyObject *obj, PyObject *name) {
    PyObject *d = _PyType_Lookup(Py_TYPE(obj), name);
    if (d != NULL && Py_TYPE(d) == &TrackedFieldType && holds_slot((TrackedField *)d, obj)) {
        Py_INCREF(d); /* the class may lose it while the read runs Python code */
        PyObject *r = tf_fast((TrackedField *)d, obj, (PyObject *)Py_TYPE(obj));
        Py_DECREF(d);
        return r;
    }
    return PyObject_GenericGetAttr(obj, name);
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

/* -- change feeds (memimg.image._feeds): a noted commit, and the delivery of the queue -------------------------- */

/* The types configure_feeds() was given, and the offsets of the slots read and written here; an object of another
 * type (a _Gap in the queue, a subclass) is read with the generic attribute lookup, as Python does. */
static PyTypeObject *feed_type = NULL, *sub_type = NULL, *commit_type = NULL, *change_type = NULL;
static Py_ssize_t off_queue, off_bound, off_subs, off_oids, off_wide, off_getters; /* Feed's */
static Py_ssize_t off_closed, off_seen, off_callback;                               /* Subscription's */
static Py_ssize_t off_tx, off_time, off_to, off_meta, off_changes, off_seq;         /* Commit's */
static PyObject *py_deliver_entry = NULL, *py_failed = NULL; /* memimg.image._feeddelivery's */
static PyObject *py_note_field = NULL;                       /* the Python note_field: what the compiled one does not */
static PyObject *missing = NULL;                             /* memimg.MISSING */
static PyObject *empty_tuple = NULL;
static PyObject *s_queue, *s_bound, *s_seq, *s_to, *s_closed, *s_seen, *s_callback, *s_subs, *s_popleft, *s_obj_set;
#define CHANGE_FIELDS 11

/* The offset of slot `name` of `t` (an object slot, writable), or -1 with TypeError set. */
static Py_ssize_t slot_offset(PyTypeObject *t, const char *name) {
    PyObject *d = PyDict_GetItemString(t->tp_dict, name);
    if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type || PyDescr_TYPE(d) != t || /* a slot of t itself */
        ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX ||
        (((PyMemberDescrObject *)d)->d_member->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "configure_feeds(): %R has no slot %s", t, name);
        return -1;
    }
    return ((PyMemberDescrObject *)d)->d_member->offset;
}

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* Attribute `name` of `obj` (a new reference): read from its slot when `obj` is a `t`. */
static inline PyObject *get_slot(PyObject *obj, PyTypeObject *t, Py_ssize_t offset, PyObject *name) {
    if (Py_TYPE(obj) == t) {
        PyObject *v = SLOT(obj, offset);
        if (v != NULL) return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, name); /* (an empty slot: its AttributeError) */
}

static inline int set_slot(PyObject *obj, PyTypeObject *t, Py_ssize_t offset, PyObject *name, PyObject *value) {
    if (Py_TYPE(obj) == t) {
        Py_XSETREF(SLOT(obj, offset), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, name, value);
}

static PyObject *configure_feeds(PyObject *mod, PyObject *args) {
    PyObject *feed, *sub, *commit, *change, *entry, *failed, *note, *miss;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OOOO:configure_feeds", &PyType_Type, &feed, &PyType_Type, &sub,
                          &PyType_Type, &commit, &PyType_Type, &change, &entry, &failed, &note, &miss))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)change, &PyTuple_Type)) {
        PyErr_Format(PyExc_TypeError, "configure_feeds(): %R is not a tuple type", change);
        return NULL;
    }
    if (!PyCallable_Check(entry) || !PyCallable_Check(failed) || !PyCallable_Check(note)) {
        PyErr_SetString(PyExc_TypeError, "configure_feeds(): _deliver_entry, _failed and note_field must be callable");
        return NULL;
    }
    PyTypeObject *f = (PyTypeObject *)feed, *s = (PyTypeObject *)sub, *c = (PyTypeObject *)commit;
    Py_ssize_t o[15] = {
        slot_offset(f, "queue"), slot_offset(f, "bound"), slot_offset(f, "subs"),
        slot_offset(f, "oids"), slot_offset(f, "wide"), slot_offset(f, "getters"),
        slot_offset(s, "closed"), slot_offset(s, "seen"), slot_offset(s, "callback"),
        slot_offset(c, "tx"), slot_offset(c, "_time"), slot_offset(c, "_to"),
        slot_offset(c, "meta"), slot_offset(c, "changes"), slot_offset(c, "seq"),
    };
    for (int i = 0; i < 15; i++)
        if (o[i] < 0) return NULL;
    off_queue = o[0], off_bound = o[1], off_subs = o[2], off_oids = o[3], off_wide = o[4], off_getters = o[5];
    off_closed = o[6], off_seen = o[7], off_callback = o[8];
    off_tx = o[9], off_time = o[10], off_to = o[11], off_meta = o[12], off_changes = o[13], off_seq = o[14];
    Py_XSETREF(feed_type, (PyTypeObject *)Py_NewRef(feed));
    Py_XSETREF(sub_type, (PyTypeObject *)Py_NewRef(sub));
    Py_XSETREF(commit_type, (PyTypeObject *)Py_NewRef(commit));
    Py_XSETREF(change_type, (PyTypeObject *)Py_NewRef(change));
    Py_XSETREF(py_deliver_entry, Py_NewRef(entry));
    Py_XSETREF(py_failed, Py_NewRef(failed));
    Py_XSETREF(py_note_field, Py_NewRef(note));
    Py_XSETREF(missing, Py_NewRef(miss));
    Py_RETURN_NONE;
}

/* first_noted(row, meta, subs, target, kind, field, key, old, new, index): the Python function's result, made
 * without its calls of tuple.__new__ and object.__new__ (the commonest commit with a subscriber: one field set). */
static PyObject *noted_commit(PyObject *const *args) {
    PyObject *row = args[0], *meta = args[1], *head[3]; /* the row's seq, tx and time */
    for (Py_ssize_t i = 0; i < 3; i++) {                 /* (a tuple, or any sequence: a driver's row) */
        head[i] = PyTuple_Check(row) && i < PyTuple_GET_SIZE(row) ? Py_NewRef(PyTuple_GET_ITEM(row, i))
                                                                   : PySequence_GetItem(row, i);
        if (head[i] == NULL) {
            while (i > 0) Py_DECREF(head[--i]);
            return NULL;
        }
    }
    PyObject *change = change_type->tp_alloc(change_type, CHANGE_FIELDS), *changes = NULL, *commit = NULL;
    if (change == NULL) goto done;
#if PY_VERSION_HEX >= 0x030E0000
    ((PyTupleObject *)change)->ob_hash = -1; /* a tuple caches its hash from 3.14 on: not computed yet */
#endif
    for (Py_ssize_t i = 0; i < 3; i++) PyTuple_SET_ITEM(change, i, Py_NewRef(head[i]));
    PyTuple_SET_ITEM(change, 3, Py_NewRef(meta));
    for (Py_ssize_t i = 4; i < CHANGE_FIELDS; i++) PyTuple_SET_ITEM(change, i, Py_NewRef(args[i - 1]));
    if ((changes = PyList_New(1)) == NULL) {
        Py_DECREF(change);
        goto done;
    }
    PyList_SET_ITEM(changes, 0, change);
    if ((commit = commit_type->tp_alloc(commit_type, 0)) == NULL) {
        Py_DECREF(changes);
        goto done;
    }
    SLOT(commit, off_tx) = Py_NewRef(head[1]);
    SLOT(commit, off_time) = Py_NewRef(head[2]);
    SLOT(commit, off_to) = Py_NewRef(args[2]);
    SLOT(commit, off_meta) = Py_NewRef(meta);
    SLOT(commit, off_changes) = changes;
done:
    for (Py_ssize_t i = 0; i < 3; i++) Py_DECREF(head[i]);
    return commit;
}

static PyObject *first_noted(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (commit_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "first_noted(): configure_feeds() was not called");
        return NULL;
    }
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "first_noted() takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    return noted_commit(args);
}

/* note_field(feed, target, oid, name, value, row): the Python function's result. Compiled: a field one subscription
 * or more follow as such (not only as part of a class or of everything), read by its getter; anything else is left
 * to the Python function. */
static PyObject *note_field(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (py_note_field == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "note_field(): configure_feeds() was not called");
        return NULL;
    }
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "note_field() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *feed = args[0], *target = args[1], *oid = args[2], *name = args[3];
    if (Py_TYPE(feed) != feed_type || SLOT(feed, off_wide) != Py_False || SLOT(feed, off_oids) == NULL ||
        SLOT(feed, off_getters) == NULL || !PyDict_CheckExact(SLOT(feed, off_oids)) ||
        !PyDict_CheckExact(SLOT(feed, off_getters)) || !PyUnicode_CheckExact(name))
        goto python;
    PyObject *follows = PyDict_GetItemWithError(SLOT(feed, off_oids), oid); /* (borrowed, as below) */
    if (follows == NULL || !PyDict_CheckExact(follows)) goto python;
    PyObject *subs = PyDict_GetItemWithError(follows, name); /* follows.get(name) or follows[None] */
    if (subs != NULL && (!PyTuple_CheckExact(subs))) goto python;
    if (subs == NULL || PyTuple_GET_SIZE(subs) == 0) {
        if (PyErr_Occurred()) return NULL;
        subs = PyDict_GetItemWithError(follows, Py_None);
        if (subs == NULL || !PyTuple_CheckExact(subs)) goto python;
        if (PyTuple_GET_SIZE(subs) == 0) Py_RETURN_NONE; /* nobody follows it */
    }
    PyObject *getters = PyDict_GetItemWithError(SLOT(feed, off_getters), (PyObject *)Py_TYPE(target));
    if (getters == NULL || !PyDict_CheckExact(getters)) goto python;
    PyObject *getter = PyDict_GetItemWithError(getters, name);
    if (getter == NULL) goto python; /* (the Python function learns the class's getters) */
    Py_INCREF(subs);
    PyObject *noted = NULL, *meta = NULL, *old = PyObject_CallOneArg(getter, target);
    if (old == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) { /* no value before */
        PyErr_Clear();
        old = Py_NewRef(missing);
    }
    if (old != NULL && (meta = PyDict_New()) != NULL) {
        PyObject *fields[10] = {args[5], meta, subs, target, s_obj_set, name, Py_None, old, args[4], Py_None};
        noted = noted_commit(fields);
        Py_DECREF(meta);
    }
    Py_XDECREF(old);
    Py_DECREF(subs);
    return noted;
python:
    if (PyErr_Occurred()) return NULL;
    return PyObject_Vectorcall(py_note_field, args, nargs, NULL);
}

/* Subscription `sub` is handed `entry` (seq `seq`) unless it is closed or has had it; its callback's exception
 * goes to _failed(sub, seq, err), which logs it or raises it (then -1). */
static int hand(PyObject *sub, PyObject *entry, PyObject *seq) {
    PyObject *v = get_slot(sub, sub_type, off_closed, s_closed);
    if (v == NULL) return -1;
    int closed = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (closed) return closed < 0 ? -1 : 0;
    if ((v = get_slot(sub, sub_type, off_seen, s_seen)) == NULL) return -1;
    int newer = PyObject_RichCompareBool(seq, v, Py_GT);
    Py_DECREF(v);
    if (newer <= 0) return newer;
    if (set_slot(sub, sub_type, off_seen, s_seen, seq) < 0 ||
        (v = get_slot(sub, sub_type, off_callback, s_callback)) == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(v, entry);
    Py_DECREF(v);
    if (r == NULL) {
        PyObject *type, *err, *tb;
        PyErr_Fetch(&type, &err, &tb);
        PyErr_NormalizeException(&type, &err, &tb);
        if (tb != NULL) PyException_SetTraceback(err, tb);
        r = PyObject_CallFunctionObjArgs(py_failed, sub, seq, err, NULL);
        Py_XDECREF(type);
        Py_XDECREF(err);
        Py_XDECREF(tb);
        if (r == NULL) return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* deliver_to_bound(feed): the Python function, compiled (the same steps, reading and writing the same attributes). */
static PyObject *deliver_to_bound(PyObject *mod, PyObject *feed) {
    if (py_failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "deliver_to_bound(): configure_feeds() was not called");
        return NULL;
    }
    PyObject *queue = get_slot(feed, feed_type, off_queue, s_queue), *bound = NULL, *entry = NULL, *seq = NULL;
    PyObject *to = NULL;
    if (queue == NULL) return NULL;
    Py_ssize_t n = PyObject_Length(queue);
    if (n < 0) goto error;
    if (n > 0) {
        if ((entry = PySequence_GetItem(queue, n - 1)) == NULL) goto error;
        bound = get_slot(entry, commit_type, off_seq, s_seq);
        Py_CLEAR(entry);
    } else {
        bound = PyLong_FromLong(0);
    }
    if (bound == NULL || set_slot(feed, feed_type, off_bound, s_bound, bound) < 0) goto error;
    while ((n = PyObject_Length(queue)) > 0) {
        if ((entry = PySequence_GetItem(queue, 0)) == NULL) goto error;
        if ((seq = get_slot(entry, commit_type, off_seq, s_seq)) == NULL) goto error;
        int over = PyObject_RichCompareBool(seq, bound, Py_GT);
        if (over < 0) goto error;
        if (over) break;
        if ((to = get_slot(entry, commit_type, off_to, s_to)) == NULL) goto error;
        if (PyTuple_CheckExact(to) && PyTuple_GET_SIZE(to) == 1) {
            PyObject *sub = Py_NewRef(PyTuple_GET_ITEM(to, 0));
            /* the Commit is the subscription's now: it holds nothing of the feed */
            int failed = set_slot(entry, commit_type, off_to, s_to, empty_tuple) < 0 || hand(sub, entry, seq) < 0;
            Py_DECREF(sub);
            if (failed) goto error;
        } else {
            PyObject *subs = get_slot(feed, feed_type, off_subs, s_subs);
            if (subs == NULL) goto error;
            PyObject *r = PyObject_CallFunctionObjArgs(py_deliver_entry, subs, entry, NULL);
            Py_DECREF(subs);
            if (r == NULL) goto error;
            Py_DECREF(r);
        }
        Py_CLEAR(to);
        Py_CLEAR(seq);
        Py_CLEAR(entry);
        PyObject *r = PyObject_CallMethodNoArgs(queue, s_popleft);
        if (r == NULL) goto error;
        Py_DECREF(r);
        Py_SETREF(bound, get_slot(feed, feed_type, off_bound, s_bound));
        if (bound == NULL) goto error;
    }
    if (n < 0) goto error;
    Py_XDECREF(seq);
    Py_XDECREF(entry);
    Py_DECREF(bound);
    Py_DECREF(queue);
    Py_RETURN_NONE;
error:
    Py_XDECREF(to);
    Py_XDECREF(seq);
    Py_XDECREF(entry);
    Py_XDECREF(bound);
    Py_DECREF(queue);
    return NULL;
}

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
    {"configure_feeds", configure_feeds, METH_VARARGS,
     "configure_feeds(Feed, Subscription, Commit, Change, _deliver_entry, _failed, note_field, MISSING)"},
    {"deliver_to_bound", deliver_to_bound, METH_O, "deliver_to_bound(feed): deliver the queue up to its bound"},
    {"note_field", (PyCFunction)(void (*)(void))note_field, METH_FASTCALL,
     "note_field(feed, target, oid, name, value, row): Feed.note of a field set by Engine.commit_field"},
    {"first_noted", (PyCFunction)(void (*)(void))first_noted, METH_FASTCALL,
     "first_noted(row, meta, subs, target, kind, field, key, old, new, index): a Commit noted with its first change"},
    {"unhook", unhook, METH_O, "Give a hooked class its generic attribute lookup back: whether it was hooked."},
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
    INTERN(s_queue, "queue")
    INTERN(s_bound, "bound")
    INTERN(s_seq, "seq")
    INTERN(s_to, "_to")
    INTERN(s_closed, "closed")
    INTERN(s_seen, "seen")
    INTERN(s_callback, "callback")
    INTERN(s_subs, "subs")
    INTERN(s_popleft, "popleft")
    INTERN(s_obj_set, "obj.set")
#undef INTERN
    if ((empty_tuple = PyTuple_New(0)) == NULL) return NULL;
    if (PyType_Ready(&TrackedFieldType) < 0 || PyType_Ready(&FastSetattrType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "TrackedField", (PyObject *)&TrackedFieldType) < 0 ||
        PyModule_AddObjectRef(m, "FastSetattr", (PyObject *)&FastSetattrType) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", SPEEDUPS_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
