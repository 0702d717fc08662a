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
 *   set to a scalar, the writer's `fast` journal open): one (kind, object, (name, value)) append; with
 *   no transaction (`fast` None), the call of writer.set_field the Python one makes;
 *   anything else calls the Python __setattr__ it wraps.
 * - Change feeds (memimg.image._feeds): first_noted, note_field and deliver_to_bound, the Python functions of the
 *   same names compiled -- the steps a subscription adds to the commonest commit (one field set), where the
 *   interpreter's work was most of their cost. note_field calls the Python function for anything but a field
 *   followed by a subscription to its object or to that field.
 * - TrackedField's read inside a transaction: TxState.read_field's common case (the overlay brought up
 *   to date, the transaction's own write, or the slot with the read recorded) compiled; the rest in Python.
 * - DictRead: a tracked dict's d[k] while tracking is on: the common read inside a transaction (the
 *   builtin read and the read recorded) compiled; anything else calls the Python reader it wraps.
 * - encode_sets: the rows of a commit's runs of obj.set events of scalars (memimg.image._encode), the
 *   payload, checksum and row the Python loop makes, byte for byte; any other event is left to that loop.
 * - apply_sets: a committed run of obj.set events applied with the table's setters, as field_set does.
 * - outcome: the events a transaction's commit writes (TxState.outcome's loop: a field's replaced sets left out).
 * - encode_states: a snapshot's walk over its objects, their states as its generated encoders make them.
 * - same_dir: the SQLite store's look, after each commit, that its directory is as it was (stat(), no result object).
 * - fold_sets: replay's loop (memimg.core._fold) over its commonest row, a field set on an entity whose schema is
 *   current: seq, checksum, payload and setter as the Python loop checks and applies them; any other row (or
 *   anything unexpected about one) is handed back to the Python loop, which reads it the long way.
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
#include <string.h>
#include <sys/stat.h>

/* What memimg.model._accel expects (its SPEEDUPS_VERSION): bumped whenever the module's functions change, so that a
 * build older than the Python code is not used (an editable install keeps the built file in the source tree). */
#define SPEEDUPS_VERSION 12

/* -- configuration (configure()) ---------------------------------------------------------------- */

static PyTypeObject *base_type = NULL;   /* PersistentBase */
static Py_ssize_t owner_offset = -1;     /* its _mi_img slot */
static PyObject *state = NULL;           /* memimg.model._tracking._S */
static Py_ssize_t open_offset = -1;      /* its `open` slot (transactions open in the process) */
static PyObject *py_get = NULL;          /* the Python TrackedField.__get__: the slow path of a read */
static PyObject *s_mi_current, *s_tracks_reads, *s_publishing, *s_open, *s_fast, *s_get, *s_set, *s_set_field;

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

/* The value of context variable `var` (borrowed) in this context (new reference), or NULL with no error. */
static inline PyObject *var_value(PyObject *var) {
    PyObject *writer = NULL;
    Py_INCREF(var);
    int failed = !PyContextVar_CheckExact(var) || PyContextVar_Get(var, NULL, &writer) < 0;
    Py_DECREF(var);
    if (failed) { PyErr_Clear(); return NULL; }
    return writer;
}

static inline PyObject *current_writer(PyObject *owner) {
    PyObject *var = cached_attr(&c_current, owner, s_mi_current);
    if (var != NULL) return var_value(var);
    var = PyObject_GetAttr(owner, s_mi_current);
    if (var == NULL) { PyErr_Clear(); return NULL; }
    PyObject *writer = var_value(var);
    Py_DECREF(var);
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
static uint64_t filled = 0; /* the epoch of the latest fill: no entry answers while it is not `epoch` */

typedef struct {
    PyObject *var;          /* the context variable answered for (compared only), NULL: empty */
    uint64_t tsid, context_ver, epoch;
    PyTypeObject *wtype;    /* the writer's type (strong), its tracks_reads false at version wversion */
    unsigned int wversion;
    PyObject *publishing;   /* the writer's publishing list (strong): quiet while empty; NULL: a false constant */
} QuietEntry;

#define QUIET_ENTRIES 8 /* per thread id, modulo */
static QuietEntry quiet_cache[QUIET_ENTRIES];

/* Fill an entry of the quiet cache: 1 if `writer` (stolen), the value of `var` in this context (thread
 * state `tsid` at `context_ver`, looked up at epoch `at`), is quiet and some transaction is open (and the
 * entry now says so), else 0. A transaction's state is never quiet (it tracks reads; tf_lookup gives it
 * to tx_read before asking): the cache never answers for a context inside a transaction. */
static PyTypeObject *tx_type = NULL; /* TxState (configure_reads()) */

static int quiet_fill(QuietEntry *e, PyObject *var, PyObject *writer, uint64_t at, uint64_t tsid, uint64_t context_ver) {
    PyTypeObject *wt = Py_TYPE(writer);
    PyObject *tracks = wt == tx_type ? NULL : cached_attr(&c_tracks, writer, s_tracks_reads);
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
    filled = at;
    int idle = publishing == NULL || PyList_GET_SIZE(publishing) == 0; /* read before any Python code runs */
    Py_DECREF(writer);
    Py_XDECREF(old_type);
    Py_XDECREF(old_publishing); /* may run Python code (a finalizer): the epoch says if it changed anything */
    return epoch == at && idle;
}

/* Whether a read of a field of `obj` (an entity) may take the slot directly: 1 or 0 from the quiet cache
 * with no other lookup, -1 when it does not tell (tf_lookup finds out). Runs no Python code. */
static inline int quiet_hit(PyObject *obj) {
    if (filled != epoch) return -1; /* nothing cached since the last change (inside a transaction, say) */
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

/* -- an open transaction's state (memimg.image._tx.TxState), for the reads inside it (configure_reads()) -- */

static Py_ssize_t oid_offset = -1;  /* PersistentBase's _mi_oid slot */
/* tx_type (TxState): defined with the quiet cache, which never answers for it */
static PyObject *raw_types = NULL;   /* memimg.image._views.RAW: the tracked collection types */
static PyObject *note_read = NULL;   /* TxState.note_read as configured: replaced (a test's), reads go slow */
static PyObject *s_note_read, *s_mi_img, *s_mi_oid, *s_done, *s_views, *s_reads, *s_host, *s_start_seq, *s_seq;
static AttrCache c_coll_img = {NULL, 0, -1, NULL}, c_coll_oid = {NULL, 0, -1, NULL};
static AttrCache c_tx_done = {NULL, 0, -1, NULL}, c_tx_views = {NULL, 0, -1, NULL}, c_tx_reads = {NULL, 0, -1, NULL},
                 c_tx_host = {NULL, 0, -1, NULL}, c_tx_start = {NULL, 0, -1, NULL};

/* -- TxState.read_field inline: a tracked field's read inside a transaction ---------------------------- */

static PyObject *read_field = NULL; /* TxState.read_field as configured: replaced (a test's), reads go slow */
static PyObject *deleted = NULL;    /* memimg.core._markers.DELETED */
static PyObject *s_read_field, *s_events, *s_synced, *s_fields;
static AttrCache c_tx_events = {NULL, 0, -1, NULL}, c_tx_synced = {NULL, 0, -1, NULL}, c_tx_fields = {NULL, 0, -1, NULL};

/* TxState.sync(): the fast path's sets since `synced` into the overlay `fields`. 0 done, -1 error, 1 cannot. */
static int tx_sync(PyObject *tx) {
    PyObject *events = cached_attr(&c_tx_events, tx, s_events), *synced = cached_attr(&c_tx_synced, tx, s_synced);
    PyObject *fields = cached_attr(&c_tx_fields, tx, s_fields);
    if (events == NULL || !PyList_CheckExact(events) || synced == NULL || !PyLong_CheckExact(synced) ||
        fields == NULL || !PyDict_CheckExact(fields) || c_tx_synced.offset < 0)
        return 1;
    Py_ssize_t from = PyLong_AsSsize_t(synced), n = PyList_GET_SIZE(events);
    if (from < 0) { PyErr_Clear(); return 1; }
    if (from == n) return 0;
    Py_INCREF(events);
    Py_INCREF(fields);
    int result = 0;
    for (Py_ssize_t i = from; i + 2 < n; i += 3) {
        PyObject *pair = PyList_GET_ITEM(events, i + 2);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) { result = 1; break; }
        PyObject *key = PyLong_FromVoidPtr(PyList_GET_ITEM(events, i + 1));
        if (key == NULL) { result = -1; break; }
        PyObject *d = PyDict_GetItemWithError(fields, key);
        if (d == NULL) {
            d = PyErr_Occurred() ? NULL : PyDict_New();
            int failed = d == NULL || PyDict_SetItem(d, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0 ||
                         PyDict_SetItem(fields, key, d) < 0;
            Py_XDECREF(d);
            Py_DECREF(key);
            if (failed) { result = -1; break; }
        } else {
            Py_DECREF(key);
            if (!PyDict_CheckExact(d)) { result = 1; break; }
            if (PyDict_SetItem(d, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) { result = -1; break; }
        }
    }
    if (result == 0 && PyList_GET_SIZE(events) == n) {
        PyObject *now = PyLong_FromSsize_t(n);
        if (now == NULL) {
            result = -1;
        } else { /* self.synced = n (its slot) */
            PyObject **slot = (PyObject **)((char *)tx + c_tx_synced.offset);
            Py_XSETREF(*slot, now);
        }
    } else if (result == 0) {
        result = 1;
    }
    Py_DECREF(fields);
    Py_DECREF(events);
    return result;
}

/* TxState.read_field(obj, self.name, ...) of transaction `tx` for a TrackedField `self` on entity `obj`
 * (new reference); NULL with no error: take the slow path (nothing recorded yet); NULL with an error: raised. */
static PyObject *tx_read(PyObject *tx, PyObject *obj, TrackedField *self) {
    if (tx_type == NULL || read_field == NULL || deleted == NULL ||
        cached_attr(&c_tx_done, tx, s_done) != Py_False || _PyType_Lookup(tx_type, s_read_field) != read_field ||
        _PyType_Lookup(tx_type, s_note_read) != note_read)
        return NULL;
    int synced = tx_sync(tx);
    if (synced != 0) {
        if (synced > 0) PyErr_Clear();
        return NULL;
    }
    PyObject *fields = cached_attr(&c_tx_fields, tx, s_fields);
    if (fields == NULL || !PyDict_CheckExact(fields)) return NULL;
    PyObject *value = NULL;
    if (PyDict_GET_SIZE(fields) != 0) {
        PyObject *key = PyLong_FromVoidPtr(obj);
        if (key == NULL) return NULL;
        PyObject *d = PyDict_GetItemWithError(fields, key);
        Py_DECREF(key);
        if (d == NULL && PyErr_Occurred()) return NULL;
        if (d != NULL) {
            if (!PyDict_CheckExact(d)) return NULL;
            value = PyDict_GetItemWithError(d, self->name);
            if (value == NULL && PyErr_Occurred()) return NULL;
            if (value != NULL) return value == deleted ? NULL : Py_NewRef(value); /* its own write */
        }
    }
    PyObject *oid = *(PyObject **)((char *)obj + oid_offset);
    value = *(PyObject **)((char *)obj + ((PyMemberDescrObject *)self->slot)->d_member->offset);
    if (value == NULL) return NULL; /* unset: the slow path raises (and records the read) */
    if (oid == NULL || oid == Py_None) return Py_NewRef(value);
    Py_INCREF(value);
    Py_INCREF(oid);
    PyObject *reads = Py_XNewRef(cached_attr(&c_tx_reads, tx, s_reads));
    PyObject *host = Py_XNewRef(cached_attr(&c_tx_host, tx, s_host));
    PyObject *start = Py_XNewRef(cached_attr(&c_tx_start, tx, s_start_seq));
    PyObject *seq = host == NULL ? NULL : PyObject_GetAttr(host, s_seq);
    int same = seq == NULL || start == NULL ? -1 : seq == start ? 1 : PyObject_RichCompareBool(seq, start, Py_EQ);
    PyObject *read = NULL;
    if (same != 1 || reads == NULL || !PySet_CheckExact(reads)) {
        PyErr_Clear();
        Py_CLEAR(value); /* the slow path reads again and checks */
    } else if ((read = PyTuple_Pack(2, oid, self->name)) == NULL || PySet_Add(reads, read) < 0) {
        Py_CLEAR(value); /* the error stands */
    }
    Py_XDECREF(read);
    Py_XDECREF(seq);
    Py_XDECREF(start);
    Py_XDECREF(host);
    Py_XDECREF(reads);
    Py_DECREF(oid);
    return value;
}

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

/* A read of `obj` through `self` (fast_ok) that the quiet cache did not answer: this context's writer
 * looked up. Inside a transaction, TxState.read_field's common case (tx_read); a quiet writer while some
 * transaction is open, the slot (and the quiet cache remembers it); anything else, the Python code. */
static PyObject *tf_lookup(TrackedField *self, PyObject *obj, PyObject *cls) {
    PyObject *owner = *(PyObject **)((char *)obj + owner_offset);
    if (owner == NULL) return tf_slow(self, obj, cls);
    int may;
    if (owner == Py_None) {
        may = truth(*(PyObject **)((char *)state + open_offset)) == 1;
    } else {
        PyObject *var = cached_attr(&c_current, owner, s_mi_current); /* NULL: not a slot or constant, no cache */
        PyObject *writer = var != NULL ? var_value(var) : current_writer(owner);
        if (writer == NULL) return tf_slow(self, obj, cls);
        if (Py_TYPE(writer) == tx_type) { /* inside a transaction: TxState.read_field's common case here */
            PyObject *value = tx_read(writer, obj, self);
            Py_DECREF(writer);
            return value != NULL || PyErr_Occurred() ? value : tf_slow(self, obj, cls);
        }
        if (var != NULL) { /* no Python code ran since the writer was looked up: the epoch is its own */
            uint64_t at = epoch;
            PyThreadState *ts = PyThreadState_Get();
            may = quiet_fill(&quiet_cache[ts->id % QUIET_ENTRIES], var, writer, at, ts->id, ts->context_ver);
        } else {
            may = quiet_writer(writer);
            Py_DECREF(writer);
            may = may && truth(*(PyObject **)((char *)state + open_offset)) == 1; /* idle reads count */
        }
    }
    if (may) {
        PyObject *value = *(PyObject **)((char *)obj + ((PyMemberDescrObject *)self->slot)->d_member->offset);
        if (value != NULL) return Py_NewRef(value); /* else the slot's own AttributeError */
    }
    return tf_slow(self, obj, cls);
}

/* A read of `obj` through `self` (fast_ok). */
static PyObject *tf_fast(TrackedField *self, PyObject *obj, PyObject *cls) {
    int hit = quiet_hit(obj);
    if (hit < 0) return tf_lookup(self, obj, cls);
    if (hit) {
        PyObject *value = *(PyObject **)((char *)obj + ((PyMemberDescrObject *)self->slot)->d_member->offset);
        if (value != NULL) return Py_NewRef(value);
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
    PyObject *r = tf_lookup(f, obj, (PyObject *)Py_TYPE(obj)); /* the quiet cache was asked: not "yes" */
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
    if (journal == Py_None) {
        /* no transaction: the Python __setattr__'s other branch, writer.set_field(obj, name, value) (its own
         * commit), called from here -- one Python frame fewer on every single-field commit */
        PyObject *call[4] = {writer, obj, name, value};
        PyObject *done = PyObject_VectorcallMethod(s_set_field, call, 4, NULL);
        Py_DECREF(writer);
        return done;
    }
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
static PyObject *s_queue, *s_bound, *s_to, *s_closed, *s_seen, *s_callback, *s_subs, *s_popleft, *s_obj_set;
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

/* -- DictRead: a tracked dict's d[k] while tracking is on ------------------------------------------- */

/* Its fast path is TxState.read_coll's for `d[k]` in the common case -- the dict attached and given its id,
 * the current writer an open transaction (TxState) with no view of this dict, the key not a tracked
 * collection, the key present, no commit since the transaction began -- the builtin read, then the read
 * recorded ((oid, key) added to the transaction's reads: TxState.note_read inline, taken only while
 * TxState.note_read is the one configured); anything else calls the Python reader it wraps
 * (`slow`, memimg.model._tracking.make_reader), from the start: the fast path has changed nothing then. */


typedef struct {
    PyObject_HEAD
    PyObject *slow;
    vectorcallfunc vectorcall;
} DictRead;

/* The value of coll[key] (new reference) on the fast path, or NULL with no error: take the slow path;
 * NULL with an error: the read failed as the Python reader's would (recording the read failed). */
static PyObject *dr_fast(PyObject *coll, PyObject *key) {
    if (tx_type == NULL || !PyDict_Check(coll)) return NULL;
    PyObject *owner = cached_attr(&c_coll_img, coll, s_mi_img);
    if (owner == NULL || owner == Py_None) return NULL;
    PyObject *oid = cached_attr(&c_coll_oid, coll, s_mi_oid);
    if (oid == NULL || !PyLong_CheckExact(oid)) return NULL;
    int raw = PyDict_Contains(raw_types, (PyObject *)Py_TYPE(key));
    if (raw != 0) { if (raw < 0) PyErr_Clear(); return NULL; }
    PyObject *writer = current_writer(owner);
    if (writer == NULL) return NULL;
    PyObject *value = NULL, *reads = NULL, *host = NULL, *start = NULL, *seq = NULL;
    if (Py_TYPE(writer) != tx_type || cached_attr(&c_tx_done, writer, s_done) != Py_False ||
        _PyType_Lookup(tx_type, s_note_read) != note_read)
        goto slow;
    PyObject *views = cached_attr(&c_tx_views, writer, s_views);
    if (views == NULL || !PyDict_CheckExact(views)) goto slow;
    if (PyDict_GET_SIZE(views) != 0) { /* a view of this dict: the transaction wrote it, its view answers */
        PyObject *id = PyLong_FromVoidPtr(coll);
        if (id == NULL) goto slow;
        int has = PyDict_Contains(views, id);
        Py_DECREF(id);
        if (has != 0) goto slow;
    }
    reads = Py_XNewRef(cached_attr(&c_tx_reads, writer, s_reads));
    host = Py_XNewRef(cached_attr(&c_tx_host, writer, s_host));
    start = Py_XNewRef(cached_attr(&c_tx_start, writer, s_start_seq));
    if (reads == NULL || !PySet_CheckExact(reads) || host == NULL || start == NULL) goto slow;
    Py_INCREF(oid);
    value = Py_XNewRef(PyDict_GetItemWithError(coll, key)); /* the builtin read (a miss: the slow path raises) */
    if (value == NULL) { Py_DECREF(oid); goto slow; }
    /* read first, then checked (as note_read, after the read): no commit since the transaction began */
    seq = PyObject_GetAttr(host, s_seq);
    int same = seq == NULL ? -1 : seq == start ? 1 : PyObject_RichCompareBool(seq, start, Py_EQ);
    if (same != 1) { Py_DECREF(oid); Py_CLEAR(value); goto slow; }
    PyObject *read = PyTuple_Pack(2, oid, key);
    Py_DECREF(oid);
    if (read == NULL || PySet_Add(reads, read) < 0) {
        Py_XDECREF(read);
        Py_CLEAR(value);
        goto done; /* the error stands */
    }
    Py_DECREF(read);
    goto done;
slow:
    PyErr_Clear();
done:
    Py_XDECREF(seq);
    Py_XDECREF(start);
    Py_XDECREF(host);
    Py_XDECREF(reads);
    Py_DECREF(writer);
    return value;
}

static PyObject *dr_call(DictRead *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) == 2 && kwnames == NULL) {
        PyObject *v = dr_fast(args[0], args[1]);
        if (v != NULL || PyErr_Occurred()) return v;
    }
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static int dr_init(DictRead *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"slow", NULL};
    PyObject *slow;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:DictRead", kwlist, &slow)) return -1;
    if (!PyCallable_Check(slow)) {
        PyErr_Format(PyExc_TypeError, "DictRead: slow must be callable, not %R", slow);
        return -1;
    }
    Py_INCREF(slow);
    Py_XSETREF(self->slow, slow);
    self->vectorcall = (vectorcallfunc)dr_call;
    return 0;
}

static PyObject *dr_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    DictRead *self = (DictRead *)type->tp_alloc(type, 0);
    if (self != NULL) self->vectorcall = NULL;
    return (PyObject *)self;
}

static PyObject *dr_tp_call(DictRead *self, PyObject *args, PyObject *kwds) {
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_TypeError, "DictRead was not initialised");
        return NULL;
    }
    return PyVectorcall_Call((PyObject *)self, args, kwds);
}

static int dr_traverse(DictRead *self, visitproc visit, void *arg) {
    Py_VISIT(self->slow);
    return 0;
}

static int dr_clear(DictRead *self) {
    Py_CLEAR(self->slow);
    return 0;
}

static void dr_dealloc(DictRead *self) {
    PyObject_GC_UnTrack(self);
    dr_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *dr_slow_attr(DictRead *self, void *name) {
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_TypeError, "DictRead was not initialised");
        return NULL;
    }
    return PyObject_GetAttrString(self->slow, (const char *)name);
}

static PyObject *dr_wrapped(DictRead *self, void *unused) {
    if (self->slow == NULL) {
        PyErr_SetString(PyExc_TypeError, "DictRead was not initialised");
        return NULL;
    }
    return Py_NewRef(self->slow);
}

static PyGetSetDef dr_getset[] = {
    {"__name__", (getter)dr_slow_attr, NULL, "the wrapped reader's name", "__name__"},
    {"__qualname__", (getter)dr_slow_attr, NULL, "the wrapped reader's qualified name", "__qualname__"},
    {"__module__", (getter)dr_slow_attr, NULL, "the wrapped reader's module", "__module__"},
    {"__doc__", (getter)dr_slow_attr, NULL, "the wrapped reader's docstring", "__doc__"},
    {"__wrapped__", (getter)dr_wrapped, NULL, "the wrapped reader (slow)", NULL},
    {NULL},
};

static PyMemberDef dr_members[] = {
    {"slow", T_OBJECT, offsetof(DictRead, slow), READONLY, "the Python reader (everything off the fast path)"},
    {NULL},
};

static PyTypeObject DictReadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "memimg.model._speedups.DictRead",
    .tp_doc = "A tracked dict's __getitem__ while tracking is on: the common read in a transaction compiled.",
    .tp_basicsize = sizeof(DictRead),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(DictRead, vectorcall),
    .tp_call = (ternaryfunc)dr_tp_call,
    .tp_new = dr_new,
    .tp_init = (initproc)dr_init,
    .tp_dealloc = (destructor)dr_dealloc,
    .tp_traverse = (traverseproc)dr_traverse,
    .tp_clear = (inquiry)dr_clear,
    .tp_descr_get = fs_descr_get,
    .tp_members = dr_members,
    .tp_getset = dr_getset,
};

/* sync(tx): TxState.sync's loop (the fast path's sets into the overlay): True done, False left to Python. */
static PyObject *sync_overlay(PyObject *mod, PyObject *tx) {
    if (tx_type == NULL || Py_TYPE(tx) != tx_type) Py_RETURN_FALSE;
    int r = tx_sync(tx);
    if (r < 0) return NULL;
    return PyBool_FromLong(r == 0);
}

static PyObject *configure_reads(PyObject *mod, PyObject *args) {
    PyObject *tx, *raw, *gone;
    if (!PyArg_ParseTuple(args, "O!O!O:configure_reads", &PyType_Type, &tx, &PyDict_Type, &raw, &gone)) return NULL;
    PyObject *reader = _PyType_Lookup((PyTypeObject *)tx, s_read_field);
    if (reader == NULL) {
        PyErr_Format(PyExc_TypeError, "configure_reads(): %R has no read_field", tx);
        return NULL;
    }
    Py_INCREF(reader);
    Py_XSETREF(read_field, reader);
    Py_INCREF(gone);
    Py_XSETREF(deleted, gone);
    Py_INCREF(tx);
    Py_XSETREF(tx_type, (PyTypeObject *)tx);
    PyObject *note = _PyType_Lookup((PyTypeObject *)tx, s_note_read);
    if (note == NULL) {
        PyErr_Format(PyExc_TypeError, "configure_reads(): %R has no note_read", tx);
        return NULL;
    }
    Py_INCREF(note);
    Py_XSETREF(note_read, note);
    Py_INCREF(raw);
    Py_XSETREF(raw_types, raw);
    Py_RETURN_NONE;
}

/* -- a commit's obj.set rows (memimg.image._encode) ---------------------------------------------------- */

/* encode_sets(pending, at, rows, tx, ts, kind, current, checksums, dumps): the rows of pending[at:], appended
 * to `rows`, as EncodeSession's loop makes them -- (seq, tx, ts, "obj.set", oid, payload, checksum), seq =
 * tx + len(rows) -- for as long as the events are obj.set of a scalar on an object that has its id and whose
 * class the log has declared; returns the index of the first event it left (to the Python loop). The payload
 * is orjson's `[[name, value]]`: a str, int, bool or None written here, in orjson's bytes; a float, and a str
 * that needs escaping or is not ASCII, by `dumps` itself, spliced. The checksum is event_checksum's formula
 * (zlib's CRC-32, computed here). */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_table[t][i] = crc_table[0][crc_table[t - 1][i] & 0xFF] ^ (crc_table[t - 1][i] >> 8);
}

/* zlib.crc32(buf, crc) */
static uint32_t crc_update(uint32_t crc, const unsigned char *p, Py_ssize_t n) {
    uint32_t c = ~crc;
    while (n >= 8) { /* slicing by 8, little-endian loads */
        uint32_t a = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        c = crc_table[7][a & 0xFF] ^ crc_table[6][(a >> 8) & 0xFF] ^ crc_table[5][(a >> 16) & 0xFF] ^
            crc_table[4][a >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

static inline void put_le64(unsigned char *p, long long v) {
    unsigned long long u = (unsigned long long)v;
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(u >> (8 * i));
}

/* An event row's checksum, memimg.core._rows.event_checksum's formula: crc32(payload, crc32(pack("<qqqq", seq, tx, ts,
 * target), code)), `code` the kind's. */
static uint32_t event_crc(uint32_t code, long long seq, long long tx, long long ts, long long target,
                          const char *payload, Py_ssize_t size) {
    unsigned char cols[32];
    put_le64(cols, seq);
    put_le64(cols + 8, tx);
    put_le64(cols + 16, ts);
    put_le64(cols + 24, target);
    return crc_update(crc_update(code, cols, 32), (const unsigned char *)payload, size);
}

/* The JSON text of a str orjson writes as is (printable ASCII, no quote nor backslash): its bytes, else NULL. */
static inline const char *plain_text(PyObject *s, Py_ssize_t *len) {
    if (!PyUnicode_IS_COMPACT_ASCII(s)) return NULL;
    const unsigned char *p = PyUnicode_1BYTE_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7F) return NULL;
    }
    *len = n;
    return (const char *)p;
}

/* One JSON element: literal text (`text`, `len`), or bytes `spliced` (owned) that dumps made. */
typedef struct {
    const char *text;
    Py_ssize_t len;
    int quoted;
    PyObject *spliced;
    char digits[24];
} Element;

/* 1: `v` is written into `e`; 0: not a value of this path (nothing set); -1: error. */
static int element(Element *e, PyObject *v, PyObject *dumps) {
    e->spliced = NULL;
    e->quoted = 0;
    if (PyUnicode_CheckExact(v)) {
        e->text = plain_text(v, &e->len);
        if (e->text != NULL) {
            e->quoted = 1;
            return 1;
        }
    } else if (v == Py_None) {
        e->text = "null", e->len = 4;
        return 1;
    } else if (v == Py_True) {
        e->text = "true", e->len = 4;
        return 1;
    } else if (v == Py_False) {
        e->text = "false", e->len = 5;
        return 1;
    } else if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) return 0; /* outside the INLINE rule's range: written ["i", text] by the Python loop */
        if (x == -1 && PyErr_Occurred()) return -1;
        /* the decimal digits, written backwards from the end of the buffer (snprintf costs ~10x more) */
        char *end = e->digits + sizeof e->digits, *q = end;
        unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
        do {
            *--q = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (x < 0) *--q = '-';
        e->text = q;
        e->len = end - q;
        return 1;
    } else if (PyFloat_CheckExact(v)) {
        if (!isfinite(PyFloat_AS_DOUBLE(v))) return 0;
    } else {
        return 0;
    }
    /* a float, or a str with escapes or beyond ASCII: orjson's own text of it */
    PyObject *b = PyObject_CallOneArg(dumps, v);
    if (b == NULL) return -1;
    if (!PyBytes_CheckExact(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "encode_sets(): dumps() did not return bytes");
        return -1;
    }
    e->spliced = b;
    e->text = PyBytes_AS_STRING(b);
    e->len = PyBytes_GET_SIZE(b);
    return 1;
}

static inline char *put(char *p, Element *e) {
    if (e->quoted) *p++ = '"';
    memcpy(p, e->text, e->len);
    p += e->len;
    if (e->quoted) *p++ = '"';
    return p;
}


static PyObject *encode_sets(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "encode_sets() takes 9 arguments");
        return NULL;
    }
    PyObject *pending = args[0], *rows = args[2], *tx = args[3], *ts = args[4], *kind = args[5], *current = args[6];
    PyObject *dumps = args[8];
    if (base_type == NULL || oid_offset < 0) {
        PyErr_SetString(PyExc_RuntimeError, "encode_sets(): configure() was not called");
        return NULL;
    }
    if (!PyList_CheckExact(pending) || !PyList_CheckExact(rows) || !PyLong_CheckExact(tx) || !PyLong_CheckExact(ts) ||
        !PyAnySet_CheckExact(current)) {
        PyErr_SetString(PyExc_TypeError, "encode_sets(): bad argument types");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) return NULL;
    if (at < 0) return PyErr_Format(PyExc_ValueError, "an index of the events is not negative (got %zd)", at);
    int checksums = PyObject_IsTrue(args[7]);
    if (checksums < 0) return NULL;
    long long txv = PyLong_AsLongLong(tx), tsv = PyLong_AsLongLong(ts);
    if ((txv == -1 || tsv == -1) && PyErr_Occurred()) return NULL;
    PyObject *name = PyObject_GetAttrString(kind, "name"), *code_obj = PyObject_GetAttrString(kind, "code");
    if (name == NULL || code_obj == NULL) {
        Py_XDECREF(name);
        Py_XDECREF(code_obj);
        return NULL;
    }
    uint32_t code = (uint32_t)PyLong_AsUnsignedLongMask(code_obj);
    Py_DECREF(code_obj);
    if (PyErr_Occurred()) {
        Py_DECREF(name);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(pending);
    for (; at < n; at++) {
        PyObject *ev = PyList_GET_ITEM(pending, at);
        if (!PyTuple_CheckExact(ev) || PyTuple_GET_SIZE(ev) != 3 || PyTuple_GET_ITEM(ev, 0) != kind) break;
        PyObject *target = PyTuple_GET_ITEM(ev, 1), *a = PyTuple_GET_ITEM(ev, 2);
        if (!PyObject_TypeCheck(target, base_type) || !PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != 2) break;
        PyObject *oid = *(PyObject **)((char *)target + oid_offset);
        if (oid == NULL || !PyLong_CheckExact(oid)) break; /* no id yet: the Python loop gives it one */
        int declared = PySet_Contains(current, (PyObject *)Py_TYPE(target));
        if (declared < 0) goto error;
        if (!declared) break;
        long long oidv = PyLong_AsLongLong(oid);
        if (oidv == -1 && PyErr_Occurred()) goto error;
        PyObject *field = PyTuple_GET_ITEM(a, 0);
        if (!PyUnicode_CheckExact(field)) break;
        Element f, v;
        int got = element(&f, field, dumps);
        if (got < 0) goto error;
        got = element(&v, PyTuple_GET_ITEM(a, 1), dumps);
        if (got <= 0) {
            Py_XDECREF(f.spliced);
            if (got < 0) goto error;
            break;
        }
        /* [[f,v]] */
        Py_ssize_t size = 2 + f.len + 2 * f.quoted + 1 + v.len + 2 * v.quoted + 2;
        PyObject *data = PyBytes_FromStringAndSize(NULL, size);
        if (data == NULL) {
            Py_XDECREF(f.spliced);
            Py_XDECREF(v.spliced);
            goto error;
        }
        char *p = PyBytes_AS_STRING(data);
        *p++ = '[';
        *p++ = '[';
        p = put(p, &f);
        *p++ = ',';
        p = put(p, &v);
        *p++ = ']';
        *p++ = ']';
        Py_XDECREF(f.spliced);
        Py_XDECREF(v.spliced);
        long long seqv = txv + PyList_GET_SIZE(rows);
        uint32_t crc = checksums ? event_crc(code, seqv, txv, tsv, oidv, PyBytes_AS_STRING(data), size) : 0;
        PyObject *seq = PyLong_FromLongLong(seqv), *sum = PyLong_FromUnsignedLong(crc);
        if (seq == NULL || sum == NULL) {
            Py_XDECREF(seq);
            Py_XDECREF(sum);
            Py_DECREF(data);
            goto error;
        }
        Py_INCREF(tx);
        Py_INCREF(ts);
        Py_INCREF(name);
        Py_INCREF(oid);
        PyObject *row = PyTuple_New(7);
        if (row == NULL) {
            Py_DECREF(seq), Py_DECREF(sum), Py_DECREF(data), Py_DECREF(tx), Py_DECREF(ts), Py_DECREF(name), Py_DECREF(oid);
            goto error;
        }
        PyTuple_SET_ITEM(row, 0, seq);
        PyTuple_SET_ITEM(row, 1, tx);
        PyTuple_SET_ITEM(row, 2, ts);
        PyTuple_SET_ITEM(row, 3, name);
        PyTuple_SET_ITEM(row, 4, oid);
        PyTuple_SET_ITEM(row, 5, data);
        PyTuple_SET_ITEM(row, 6, sum);
        int failed = PyList_Append(rows, row);
        Py_DECREF(row);
        if (failed) goto error;
    }
    Py_DECREF(name);
    return PyLong_FromSsize_t(at);
error:
    Py_DECREF(name);
    return NULL;
}


/* apply_sets(events, at, setters, kind): apply events[at:]'s leading run of obj.set events to the committed
 * objects as ObjectTable.field_set does -- setters[type(obj)][name](obj, value) -- and return the index of the
 * first event it left (another kind, or a class whose setters the table has not made yet: the Python loop). */
static PyObject *apply_sets(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "apply_sets() takes 4 arguments");
        return NULL;
    }
    PyObject *events = args[0], *setters = args[2], *kind = args[3];
    if (!PyList_CheckExact(events) || !PyDict_CheckExact(setters)) {
        PyErr_SetString(PyExc_TypeError, "apply_sets(): bad argument types");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) return NULL;
    if (at < 0) return PyErr_Format(PyExc_ValueError, "an index of the events is not negative (got %zd)", at);
    for (; at < PyList_GET_SIZE(events); at++) {
        PyObject *ev = PyList_GET_ITEM(events, at);
        if (!PyTuple_CheckExact(ev) || PyTuple_GET_SIZE(ev) != 3 || PyTuple_GET_ITEM(ev, 0) != kind) break;
        PyObject *target = PyTuple_GET_ITEM(ev, 1), *a = PyTuple_GET_ITEM(ev, 2);
        if (!PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != 2) break;
        /* looked up for every event, as field_set does: a setter (an index's) may change the table's */
        PyObject *of_type = PyDict_GetItemWithError(setters, (PyObject *)Py_TYPE(target));
        if (of_type == NULL) {
            if (PyErr_Occurred()) return NULL;
            break;
        }
        if (!PyDict_CheckExact(of_type)) break;
        PyObject *setter = PyDict_GetItemWithError(of_type, PyTuple_GET_ITEM(a, 0));
        if (setter == NULL) {
            if (PyErr_Occurred()) return NULL;
            break; /* the Python loop raises what field_set raises */
        }
        Py_INCREF(ev); /* a setter runs Python code (an index's): the event and the dicts stay alive */
        Py_INCREF(setter);
        PyObject *call[2] = {target, PyTuple_GET_ITEM(a, 1)};
        PyObject *r = PyObject_Vectorcall(setter, call, 2, NULL);
        Py_DECREF(setter);
        Py_DECREF(ev);
        if (r == NULL) return NULL;
        Py_DECREF(r);
    }
    return PyLong_FromSsize_t(at);
}

/* -- replay's loop over obj.set rows (memimg.core._fold) ------------------------------------------------------- */

/* fold_sets(rows, expected, objects, fast_fields, code, checked, progress, decode, loads) -> (expected, row) | expected:
 * takes rows from the iterator `rows` and applies each that is an obj.set of one field on an object of
 * `objects` whose class has its setter in fast_fields -- after the checks _fold_rows's fast path makes: seq ==
 * expected, the checksum (unless `checked`), the payload one [name, value] pair -- until the iterator ends
 * (the next seq returned alone) or a row is not of that path: that row is returned untouched, with the seq it must have, for the
 * Python loop to read the long way (which names what is wrong). With `progress`, a row whose seq is a multiple
 * of 10,000 is returned too (the loop reports it). The payload is parsed here when it is orjson's text of a
 * plain ASCII name and an int (at most 18 digits), a plain ASCII str, null, true or false; anything else by
 * `loads` (orjson's), a list value then decoded by `decode`. An Exception raised on the way (by loads, decode,
 * a setter) hands the row back; anything else (KeyboardInterrupt...) propagates. */

/* The element at p[*i] if it is one of the plain forms above: a new reference (advancing *i), else NULL with no
 * error set (or with one: a failed allocation). */
static PyObject *plain_element(const char *p, Py_ssize_t n, Py_ssize_t *i) {
    Py_ssize_t j = *i;
    if (j >= n) return NULL;
    char c = p[j];
    if (c == '"') {
        Py_ssize_t k = j + 1;
        while (k < n && p[k] != '"') {
            unsigned char d = (unsigned char)p[k];
            if (d < 0x20 || d == '\\' || d >= 0x7F) return NULL;
            k++;
        }
        if (k >= n) return NULL;
        *i = k + 1;
        return PyUnicode_FromStringAndSize(p + j + 1, k - j - 1);
    }
    if (c == 'n' && n - j >= 4 && memcmp(p + j, "null", 4) == 0) {
        *i = j + 4;
        Py_RETURN_NONE;
    }
    if (c == 't' && n - j >= 4 && memcmp(p + j, "true", 4) == 0) {
        *i = j + 4;
        Py_RETURN_TRUE;
    }
    if (c == 'f' && n - j >= 5 && memcmp(p + j, "false", 5) == 0) {
        *i = j + 5;
        Py_RETURN_FALSE;
    }
    int negative = c == '-';
    Py_ssize_t k = j + negative, start = k;
    long long v = 0;
    while (k < n && p[k] >= '0' && p[k] <= '9' && k - start < 18) v = v * 10 + (p[k++] - '0');
    if (k == start || (p[start] == '0' && k - start > 1)) return NULL; /* no digit; a leading zero */
    if (k < n && ((p[k] >= '0' && p[k] <= '9') || p[k] == '.' || p[k] == 'e' || p[k] == 'E')) return NULL;
    *i = k;
    return PyLong_FromLongLong(negative ? -v : v);
}

/* Parse `[["name",value]]` (no whitespace, as orjson writes it) into *name (reusing *last when it is the same
 * text: its hash is kept) and *value, new references: 1; 0 when the payload is not of that form; -1: error. */
static int plain_pair(const char *p, Py_ssize_t n, PyObject **last, PyObject **name, PyObject **value) {
    if (n < 8 || p[0] != '[' || p[1] != '[' || p[2] != '"') return 0;
    Py_ssize_t k = 3;
    while (k < n && p[k] != '"') {
        unsigned char d = (unsigned char)p[k];
        if (d < 0x20 || d == '\\' || d >= 0x7F) return 0;
        k++;
    }
    if (k + 1 >= n || p[k + 1] != ',') return 0;
    Py_ssize_t len = k - 3, i = k + 2;
    PyObject *v = plain_element(p, n, &i);
    if (v == NULL) return PyErr_Occurred() ? -1 : 0;
    if (i + 2 != n || p[i] != ']' || p[i + 1] != ']') {
        Py_DECREF(v);
        return 0;
    }
    if (*last == NULL || PyUnicode_GET_LENGTH(*last) != len || memcmp(PyUnicode_1BYTE_DATA(*last), p + 3, len) != 0) {
        PyObject *s = PyUnicode_FromStringAndSize(p + 3, len);
        if (s == NULL) {
            Py_DECREF(v);
            return -1;
        }
        Py_XSETREF(*last, s);
    }
    Py_INCREF(*last);
    *name = *last;
    *value = v;
    return 1;
}

/* A long long of an exact int: 1, or 0 (not one, or out of range; no error set). */
static inline int small_int(PyObject *o, long long *out) {
    if (!PyLong_CheckExact(o)) return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow;
}

typedef struct {
    PyObject *objects, *fast, *decode, *loads;
    uint32_t code;
    int checked, progress;
    PyObject *last_name; /* owned */
    PyObject *apply;     /* the setters by class applied with (the table's, as field_set), or NULL: fast's own */
} Fold;

/* Apply `row` (seq `expected`): 1 applied; 0 the Python loop's (no error set); -1 an error to raise. */
static int fold_one(Fold *f, PyObject *row, long long expected) {
    int applying = 0;
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 7) return 0;
    PyObject *kind = PyTuple_GET_ITEM(row, 3), *payload = PyTuple_GET_ITEM(row, 5);
    long long seq, tx, ts, target, checksum;
    if (!small_int(PyTuple_GET_ITEM(row, 0), &seq) || seq != expected) return 0;
    if (f->progress && seq % 10000 == 0) return 0;
    if (!PyUnicode_CheckExact(kind) || PyUnicode_GET_LENGTH(kind) != 7 || !PyUnicode_IS_COMPACT_ASCII(kind) ||
        memcmp(PyUnicode_1BYTE_DATA(kind), "obj.set", 7) != 0 || !PyBytes_CheckExact(payload))
        return 0;
    if (!small_int(PyTuple_GET_ITEM(row, 4), &target) || target <= 0 || target >= PyList_GET_SIZE(f->objects))
        return 0;
    const char *data = PyBytes_AS_STRING(payload);
    Py_ssize_t size = PyBytes_GET_SIZE(payload);
    if (!f->checked) {
        if (!small_int(PyTuple_GET_ITEM(row, 1), &tx) || !small_int(PyTuple_GET_ITEM(row, 2), &ts) ||
            !small_int(PyTuple_GET_ITEM(row, 6), &checksum))
            return 0;
        if ((long long)event_crc(f->code, seq, tx, ts, target, data, size) != checksum) return 0;
    }
    PyObject *name = NULL, *value = NULL, *parsed = NULL;
    int got = plain_pair(data, size, &f->last_name, &name, &value);
    if (got < 0) goto failed;
    if (got == 0) { /* orjson's own reading of it, checked as the Python loop does */
        PyObject *call[1] = {payload};
        parsed = PyObject_Vectorcall(f->loads, call, 1, NULL);
        if (parsed == NULL) goto failed;
        if (!PyList_CheckExact(parsed) || PyList_GET_SIZE(parsed) != 1) goto left;
        PyObject *pair = PyList_GET_ITEM(parsed, 0);
        if (!PyList_CheckExact(pair) || PyList_GET_SIZE(pair) != 2) goto left;
        name = PyList_GET_ITEM(pair, 0);
        value = PyList_GET_ITEM(pair, 1);
        Py_INCREF(name);
        Py_INCREF(value);
    }
    PyObject *obj = PyList_GET_ITEM(f->objects, target);
    Py_INCREF(obj);
    PyObject *of_type = PyDict_GetItemWithError(f->fast, (PyObject *)Py_TYPE(obj));
    PyObject *setter = NULL;
    if (of_type != NULL && PyDict_CheckExact(of_type)) setter = PyDict_GetItemWithError(of_type, name);
    if (setter != NULL && f->apply != NULL) { /* a current-schema field: applied with the table's setter */
        PyObject *applied = PyDict_GetItemWithError(f->apply, (PyObject *)Py_TYPE(obj));
        setter = NULL;
        if (applied != NULL && PyDict_CheckExact(applied)) setter = PyDict_GetItemWithError(applied, name);
    }
    if (setter == NULL) {
        Py_DECREF(obj);
        if (PyErr_Occurred()) goto failed;
        goto left;
    }
    Py_INCREF(setter);
    if (PyList_CheckExact(value)) {
        PyObject *call[1] = {value};
        PyObject *decoded = PyObject_Vectorcall(f->decode, call, 1, NULL);
        if (decoded == NULL) {
            Py_DECREF(setter);
            Py_DECREF(obj);
            goto failed;
        }
        Py_SETREF(value, decoded);
    }
    PyObject *call[2] = {obj, value};
    PyObject *r = PyObject_Vectorcall(setter, call, 2, NULL);
    Py_DECREF(setter);
    Py_DECREF(obj);
    /* a table's setter (catch_sets) that failed may have done part of its work (an index's): never handed back */
    applying = f->apply != NULL;
    if (r == NULL) goto failed;
    Py_DECREF(r);
    Py_DECREF(name);
    Py_DECREF(value);
    Py_XDECREF(parsed);
    return 1;
failed:
    Py_XDECREF(name);
    Py_XDECREF(value);
    Py_XDECREF(parsed);
    if (applying || !PyErr_ExceptionMatches(PyExc_Exception)) return -1;
    PyErr_Clear(); /* the Python loop reads the row again, the long way, and names what is wrong */
    return 0;
left:
    Py_XDECREF(name);
    Py_XDECREF(value);
    Py_XDECREF(parsed);
    return 0;
}

static PyObject *fold_sets(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "fold_sets() takes 9 arguments");
        return NULL;
    }
    PyObject *rows = args[0];
    Fold f = {args[2], args[3], args[7], args[8], 0, 0, 0, NULL, NULL};
    if (!PyIter_Check(rows) || !PyList_CheckExact(f.objects) || !PyDict_CheckExact(f.fast)) {
        PyErr_SetString(PyExc_TypeError, "fold_sets(): bad argument types");
        return NULL;
    }
    long long expected = PyLong_AsLongLong(args[1]);
    if (expected == -1 && PyErr_Occurred()) return NULL;
    f.code = (uint32_t)PyLong_AsUnsignedLongMask(args[4]);
    if (PyErr_Occurred()) return NULL;
    if ((f.checked = PyObject_IsTrue(args[5])) < 0 || (f.progress = PyObject_IsTrue(args[6])) < 0) return NULL;
    PyObject *row;
    unsigned int count = 0;
    while ((row = PyIter_Next(rows)) != NULL) {
        if (++count % 4096 == 0 && PyErr_CheckSignals() < 0) { /* a long list of rows: Ctrl-C is seen */
            Py_DECREF(row);
            Py_XDECREF(f.last_name);
            return NULL;
        }
        int done = fold_one(&f, row, expected);
        if (done < 0) {
            Py_DECREF(row);
            Py_XDECREF(f.last_name);
            return NULL;
        }
        if (done == 0) {
            Py_XDECREF(f.last_name);
            PyObject *at = PyLong_FromLongLong(expected);
            if (at == NULL) {
                Py_DECREF(row);
                return NULL;
            }
            PyObject *out = PyTuple_New(2);
            if (out == NULL) {
                Py_DECREF(at);
                Py_DECREF(row);
                return NULL;
            }
            PyTuple_SET_ITEM(out, 0, at);
            PyTuple_SET_ITEM(out, 1, row);
            return out;
        }
        Py_DECREF(row);
        expected++;
    }
    Py_XDECREF(f.last_name);
    if (PyErr_Occurred()) return NULL; /* the iterator's (a failed read): the store names what */
    return PyLong_FromLongLong(expected); /* the rows ended: the next seq alone (a row handed back is a pair) */
}

/* Whether `row` is an obj.set row at `seq` whose checksum holds (its tx in *tx): 1, else 0 (no error set). */
static int intact_set(Fold *f, PyObject *row, long long seq, long long *tx) {
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 7) return 0;
    PyObject *kind = PyTuple_GET_ITEM(row, 3), *payload = PyTuple_GET_ITEM(row, 5);
    long long at, ts, target, checksum;
    if (!small_int(PyTuple_GET_ITEM(row, 0), &at) || at != seq || !small_int(PyTuple_GET_ITEM(row, 1), tx) ||
        !small_int(PyTuple_GET_ITEM(row, 2), &ts) || !small_int(PyTuple_GET_ITEM(row, 4), &target) ||
        !small_int(PyTuple_GET_ITEM(row, 6), &checksum))
        return 0;
    if (!PyUnicode_CheckExact(kind) || PyUnicode_GET_LENGTH(kind) != 7 || !PyUnicode_IS_COMPACT_ASCII(kind) ||
        memcmp(PyUnicode_1BYTE_DATA(kind), "obj.set", 7) != 0 || !PyBytes_CheckExact(payload))
        return 0;
    return (long long)event_crc(f->code, seq, *tx, ts, target, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload)) ==
           checksum;
}

/* The exception raised (normalized, its traceback on it), taken off the thread: a new reference. */
static PyObject *take_raised(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* catch_sets(first, rows, expected, objects, fast_fields, setters, code, decode, loads, progress, watch)
 *   -> (expected, ts, row, next, error, in_doubt):
 * a running image's catch-up (memimg.core._fold._fold_transactions) over its commonest transaction, one obj.set
 * row. `first` (a row that begins a transaction) and the rows after it from the iterator `rows` are applied one
 * after the other while each is a transaction of its own -- the row after it, an obj.set row intact and in
 * order, has another tx; or the rows ended -- and passes fold_one's checks (seq == expected, the checksum, the payload one [name, value] pair, the field
 * one of fast_fields' for the object's class); each is applied with setters[type(obj)][name] (the table's, as
 * ObjectTable.field_set applies it). Nothing is applied before the row after it is read. Returns the next
 * expected seq, the largest ts applied (-1: none), the row it stopped at (None: the rows ended) and the row after
 * it if one was read (else None) -- both for the Python loop, untouched -- and `error`: None, or the exception
 * that stopped it, for the caller to raise once it has counted what was applied (the iterator's: a failed read,
 * `row` not applied) and whether `row`'s outcome is unknown (`in_doubt`: raised while `row` was applied -- by
 * the table's setter, which may have done part of its work -- or, not an Exception, while it was decoded; an
 * Exception while it was read or decoded hands it back, as fold_sets does). The largest ts starts at LLONG_MIN.
 * After each row applied, `progress` (a list of two) holds the next expected seq and the largest ts: what the
 * caller finds if the call ends otherwise (an interrupt seen at the next bytecode). Before each row, `watch` (a
 * set: the image's open transactions) must be empty, else it stops there. */
static PyObject *catch_sets(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "catch_sets() takes 11 arguments");
        return NULL;
    }
    PyObject *rows = args[1], *progress = args[9], *watch = args[10];
    Fold f = {args[3], args[4], args[7], args[8], 0, 0, 0, NULL, args[5]};
    if (!PyIter_Check(rows) || !PyList_CheckExact(f.objects) || !PyDict_CheckExact(f.fast) ||
        !PyDict_CheckExact(f.apply) || !PyList_CheckExact(progress) || PyList_GET_SIZE(progress) != 2 ||
        !PyAnySet_Check(watch)) {
        PyErr_SetString(PyExc_TypeError, "catch_sets(): bad argument types");
        return NULL;
    }
    long long expected = PyLong_AsLongLong(args[2]);
    if (expected == -1 && PyErr_Occurred()) return NULL;
    f.code = (uint32_t)PyLong_AsUnsignedLongMask(args[6]);
    if (PyErr_Occurred()) return NULL;
    long long latest = LLONG_MIN;
    PyObject *row = args[0], *next = NULL, *error = NULL;
    int doubt = 0;
    Py_INCREF(row);
    unsigned int count = 0;
    for (;;) {
        long long tx, ts, next_tx;
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 7 || !small_int(PyTuple_GET_ITEM(row, 1), &tx) ||
            !small_int(PyTuple_GET_ITEM(row, 2), &ts))
            break;
        if (++count % 4096 == 0 && PyErr_CheckSignals() < 0) { /* a long catch-up: Ctrl-C is seen */
            error = take_raised();
            break;
        }
        next = PyIter_Next(rows);
        if (next == NULL && PyErr_Occurred()) { /* a failed read: the store names what */
            error = take_raised();
            break;
        }
        if (next == Py_None) Py_CLEAR(next); /* the Python loop's end of the rows, as its next(rows, None) reads it */
        /* the row is a whole transaction if the next is of another -- told by a next row found intact (as the
         * Python loop finds every row before it takes the one before as whole), else left to the Python loop */
        if (next != NULL && (!intact_set(&f, next, expected + 1, &next_tx) || next_tx == tx)) break;
        if (PySet_GET_SIZE(watch) != 0) break; /* opened meanwhile (by code a row ran): the Python path's now */
        int done = fold_one(&f, row, expected);
        f.checked = 1; /* the next row's checksum was just found to hold */
        if (done < 0) {
            error = take_raised();
            doubt = 1;
            break;
        }
        if (done == 0) break;
        expected++;
        if (ts > latest) latest = ts;
        /* what is applied, kept where the caller finds it whatever stops this call or the next bytecode */
        PyObject *at = PyLong_FromLongLong(expected), *when = PyLong_FromLongLong(latest);
        if (at == NULL || when == NULL) {
            Py_XDECREF(at);
            Py_XDECREF(when);
            error = take_raised();
            doubt = 1;
            break;
        }
        PyList_SetItem(progress, 0, at); /* (steals the references; index checked above) */
        PyList_SetItem(progress, 1, when);
        Py_DECREF(row);
        row = next; /* (NULL: the rows ended) */
        next = NULL;
        if (row == NULL) break;
    }
    Py_XDECREF(f.last_name);
    PyObject *out = Py_BuildValue("(LLOOOO)", expected, latest, row != NULL ? row : Py_None,
                                  next != NULL ? next : Py_None, error != NULL ? error : Py_None,
                                  doubt ? Py_True : Py_False);
    Py_XDECREF(row);
    Py_XDECREF(next);
    Py_XDECREF(error);
    return out;
}

/* -- a transaction's outcome (memimg.image._tx.TxState.outcome) ------------------------------------------------ */

/* outcome(events, set_kind, del_kind, add_kind, native, counter_fields): TxState.outcome's loop -- the triples
 * of the flat `events`, less each set_kind event of a value whose type is in `native` on a field that is not a
 * counter (counter_fields(type(target))) which a later set_kind event of the same field replaces with no
 * del_kind or add_kind event of that field in between; a new list of (kind, target, args) tuples, in order.
 * None: an event of a shape the Python loop must see (args not a tuple of at least one item, two for a set). */
/* One event of outcome()'s loop, its references held by the caller: 0 left out, 1 kept (appended to `out`),
 * 2 of a shape the Python loop must see, -1 an error. */
static int outcome_step(PyObject *k, PyObject *target, PyObject *a, PyObject *set_kind, PyObject *del_kind,
                        PyObject *add_kind, PyObject *native, PyObject *counters_of, PyObject *later,
                        PyObject *counters, PyObject *out) {
    int is_set = k == set_kind;
    if (is_set || k == del_kind || k == add_kind) {
        if (!PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) < 1 + is_set) return 2;
        PyObject *id = PyLong_FromVoidPtr(target);
        if (id == NULL) return -1;
        PyObject *key = PyTuple_Pack(2, id, PyTuple_GET_ITEM(a, 0));
        Py_DECREF(id);
        if (key == NULL) return -1;
        if (!is_set) { /* later.discard((id(target), args[0])) */
            int gone = PySet_Discard(later, key);
            Py_DECREF(key);
            if (gone < 0) return -1;
        } else {
            int seen = PySet_Contains(later, key);
            if (seen == 0) seen = PySet_Add(later, key) < 0 ? -1 : 0;
            Py_DECREF(key);
            if (seen < 0) return -1;
            if (seen) { /* replaced by a later assignment: left out if a native value of a field not a counter */
                int plain = PySet_Contains(native, (PyObject *)Py_TYPE(PyTuple_GET_ITEM(a, 1)));
                if (plain < 0) return -1;
                if (plain) {
                    PyObject *spec = PyDict_GetItemWithError(counters, (PyObject *)Py_TYPE(target));
                    if (spec != NULL) {
                        Py_INCREF(spec);
                    } else if (!PyErr_Occurred()) {
                        PyObject *call[1] = {(PyObject *)Py_TYPE(target)};
                        spec = PyObject_Vectorcall(counters_of, call, 1, NULL);
                        if (spec != NULL && PyDict_SetItem(counters, (PyObject *)Py_TYPE(target), spec) < 0)
                            Py_CLEAR(spec);
                    }
                    int counted = spec == NULL ? -1 : PySequence_Contains(spec, PyTuple_GET_ITEM(a, 0));
                    Py_XDECREF(spec);
                    if (counted < 0) return -1;
                    if (!counted) return 0; /* never visible: not written */
                }
            }
        }
    }
    PyObject *triple = PyTuple_Pack(3, k, target, a);
    if (triple == NULL) return -1;
    int failed = PyList_Append(out, triple);
    Py_DECREF(triple);
    return failed ? -1 : 1;
}

static PyObject *outcome(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "outcome() takes 6 arguments");
        return NULL;
    }
    PyObject *events = args[0], *set_kind = args[1], *del_kind = args[2], *add_kind = args[3], *native = args[4];
    PyObject *counters_of = args[5];
    if (!PyList_CheckExact(events) || !PyAnySet_Check(native)) {
        PyErr_SetString(PyExc_TypeError, "outcome(): bad argument types");
        return NULL;
    }
    PyObject *later = PySet_New(NULL), *counters = PyDict_New(), *out = PyList_New(0), *result = NULL;
    if (later == NULL || counters == NULL || out == NULL) goto done;
    Py_INCREF(events); /* counter_fields runs Python code: the list and what is read from it stay alive */
    int step = 1;
    for (Py_ssize_t i = PyList_GET_SIZE(events) - 3; i >= 0 && step >= 0 && step < 2; i -= 3) {
        if (i + 2 >= PyList_GET_SIZE(events)) { /* the list changed under the loop */
            step = 2;
            break;
        }
        PyObject *k = Py_NewRef(PyList_GET_ITEM(events, i)), *target = Py_NewRef(PyList_GET_ITEM(events, i + 1));
        PyObject *a = Py_NewRef(PyList_GET_ITEM(events, i + 2));
        step = outcome_step(k, target, a, set_kind, del_kind, add_kind, native, counters_of, later, counters, out);
        Py_DECREF(k), Py_DECREF(target), Py_DECREF(a);
    }
    Py_DECREF(events);
    if (step == 2) {
        result = Py_NewRef(Py_None); /* the Python loop's */
    } else if (step >= 0 && PyList_Reverse(out) == 0) {
        result = Py_NewRef(out);
    }
done:
    Py_XDECREF(later);
    Py_XDECREF(counters);
    Py_XDECREF(out);
    return result;
}

/* -- a snapshot's walk (memimg.core._snapshotter.SnapshotWriter.step) ------------------------------------------ */

/* encode_states(batch, plans, encoders, out, seen, queue, linked, value, list_type): append the states of the
 * objects of `batch` to `out`, as [encoders[type(obj)](obj) for obj in batch] -- the walk's generated encoders
 * (REF_MARK) -- makes them: for an entity whose class has a plan (the member descriptors of its fields, in declared
 * order) and every field set, its fields read first, then each value stored by the inline rule -- a str, an int
 * of 64 bits, a bool or None as itself; an object of a type in `linked` as ["r", oid], marked in `seen` and pushed
 * on `queue` when met for the first time; anything else through `value` --; a tracked list (list_type) its items
 * alike, as it is iterated; any other object (a dict, a set, a field unset) by its encoder. An error is raised
 * where the encoders raise it (value()'s, a reference's id that is not one), and nothing of the batch is
 * appended then. */

static PyObject *s_r = NULL;    /* "r" */
static PyObject *s_list = NULL; /* "list" */

/* The stored form of `v` (new reference), or NULL with the error the generated encoders raise. */
static PyObject *walk_item(PyObject *v, PyObject *seen, PyObject *queue, PyObject *linked, PyObject *value) {
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type || t == &PyBool_Type || v == Py_None) return Py_NewRef(v);
    if (t == &PyLong_Type) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow && !(x == -1 && PyErr_Occurred())) return Py_NewRef(v);
        PyErr_Clear(); /* past 64 bits: value() writes it */
    } else {
        int is_linked = PySet_Contains(linked, (PyObject *)t);
        if (is_linked < 0) return NULL;
        if (is_linked) { /* o if seen[o := v._mi_oid] else mark(o, 1) or push(v) or o */
            PyObject *oid = NULL;
            if (base_type != NULL && PyObject_TypeCheck(v, base_type))
                oid = Py_XNewRef(*(PyObject **)((char *)v + oid_offset));
            if (oid == NULL && (oid = PyObject_GetAttr(v, s_mi_oid)) == NULL) return NULL;
            Py_ssize_t o = PyLong_CheckExact(oid) ? PyLong_AsSsize_t(oid) : -1;
            if (o == -1) PyErr_Clear();
            if (o >= 0 && o < PyByteArray_GET_SIZE(seen)) { /* the common case, at C speed */
                char *met = PyByteArray_AS_STRING(seen) + o;
                if (!*met) {
                    *met = 1;
                    if (PyList_Append(queue, v) < 0) {
                        Py_DECREF(oid);
                        return NULL;
                    }
                }
            } else { /* anything else as Python indexes a bytearray (from its end, or raising) */
                PyObject *met = PyObject_GetItem(seen, oid);
                int is_met = met == NULL ? -1 : PyObject_IsTrue(met);
                Py_XDECREF(met);
                if (is_met == 0) {
                    PyObject *one = PyLong_FromLong(1);
                    is_met = one == NULL || PyObject_SetItem(seen, oid, one) < 0 || PyList_Append(queue, v) < 0 ? -1 : 0;
                    Py_XDECREF(one);
                }
                if (is_met < 0) {
                    Py_DECREF(oid);
                    return NULL;
                }
            }
            PyObject *ref = PyList_New(2);
            if (ref == NULL) {
                Py_DECREF(oid);
                return NULL;
            }
            PyList_SET_ITEM(ref, 0, Py_NewRef(s_r));
            PyList_SET_ITEM(ref, 1, oid);
            return ref;
        }
    }
    PyObject *call[1] = {v};
    return PyObject_Vectorcall(value, call, 1, NULL);
}

#define WALK_FIELDS 64 /* an entity with more fields goes to its encoder */

/* Read entity `obj`'s fields at the member descriptors of the tuple `members` into `values` (new references), all
 * first: the count read, the tuple's size when every field is a set slot; else (a field unset, or not a plain
 * slot of obj's class) none is kept and -1 is returned. */
static Py_ssize_t read_slots(PyObject *obj, PyObject *members, PyObject **values) {
    Py_ssize_t n = PyTuple_GET_SIZE(members);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyTuple_GET_ITEM(members, i);
        PyObject *v = NULL;
        if (Py_TYPE(d) == &PyMemberDescr_Type && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
            PyObject_TypeCheck(obj, PyDescr_TYPE(d)))
            v = *(PyObject **)((char *)obj + ((PyMemberDescrObject *)d)->d_member->offset);
        if (v == NULL) {
            for (Py_ssize_t j = 0; j < i; j++) Py_DECREF(values[j]);
            return -1;
        }
        values[i] = Py_NewRef(v);
    }
    return n;
}

/* The state of entity `obj` (new reference): its fields, read at the plan's slots first; NULL with an error, or
 * NULL with none when its encoder is to write it (a field unset, a plan it cannot read). */
static PyObject *walk_entity(PyObject *obj, PyObject *plan, PyObject *seen, PyObject *queue, PyObject *linked,
                             PyObject *value) {
    Py_ssize_t n = PyTuple_GET_SIZE(plan);
    PyObject *values[WALK_FIELDS];
    if (n > WALK_FIELDS || read_slots(obj, plan, values) < n) return NULL; /* unset: the encoder's slow state */
    PyObject *state = PyList_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = state == NULL ? NULL : walk_item(values[i], seen, queue, linked, value);
        if (item == NULL) Py_CLEAR(state);
        else PyList_SET_ITEM(state, i, item);
    }
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(values[i]);
    return state;
}

/* The state of tracked list `obj` (new reference): its items, as it is iterated; NULL with an error. */
static PyObject *walk_list(PyObject *obj, PyObject *seen, PyObject *queue, PyObject *linked, PyObject *value) {
    PyObject *state = PyList_New(0);
    if (state == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(obj); i++) { /* as list.__iter__: the size read at each step */
        PyObject *v = Py_NewRef(PyList_GET_ITEM(obj, i));
        PyObject *item = walk_item(v, seen, queue, linked, value);
        Py_DECREF(v);
        if (item == NULL || PyList_Append(state, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(state);
            return NULL;
        }
        Py_DECREF(item);
    }
    return state;
}

static PyObject *encode_states(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "encode_states() takes 9 arguments");
        return NULL;
    }
    PyObject *batch = args[0], *plans = args[1], *encoders = args[2], *out = args[3], *seen = args[4];
    PyObject *queue = args[5], *linked = args[6], *value = args[7], *list_type = args[8];
    if (!PyList_CheckExact(batch) || !PyDict_CheckExact(plans) || !PyList_CheckExact(out) ||
        !PyByteArray_CheckExact(seen) || !PyList_CheckExact(queue) || !PyAnySet_Check(linked)) {
        PyErr_SetString(PyExc_TypeError, "encode_states(): bad argument types");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    PyObject *states = PyList_New(n); /* appended to `out` once all are made */
    if (states == NULL) return NULL;
    for (Py_ssize_t b = 0; b < n; b++) {
        PyObject *obj = Py_NewRef(PyList_GET_ITEM(batch, b));
        PyTypeObject *t = Py_TYPE(obj);
        PyObject *state = NULL;
        if ((PyObject *)t == list_type && PyList_Check(obj)) {
            state = walk_list(obj, seen, queue, linked, value);
        } else {
            PyObject *plan = PyDict_GetItemWithError(plans, (PyObject *)t);
            if (plan != NULL && PyTuple_CheckExact(plan)) {
                Py_INCREF(plan);
                state = walk_entity(obj, plan, seen, queue, linked, value);
                Py_DECREF(plan);
            }
            if (state == NULL && !PyErr_Occurred()) { /* its encoder (which raises what is wrong) */
                PyObject *enc = PyObject_GetItem(encoders, (PyObject *)t);
                if (enc != NULL) {
                    PyObject *call[1] = {obj};
                    state = PyObject_Vectorcall(enc, call, 1, NULL);
                    Py_DECREF(enc);
                }
            }
        }
        Py_DECREF(obj);
        if (state == NULL) {
            Py_DECREF(states);
            return NULL;
        }
        PyList_SET_ITEM(states, b, state);
    }
    Py_ssize_t at = PyList_GET_SIZE(out);
    int failed = PyList_SetSlice(out, at, at, states);
    Py_DECREF(states);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

/* -- a bulk attach's walk (memimg.image._bulk.BulkAttacher._walk) ------------------------------------------- */

/* bulk_records(queue, at, plans, records, owner, linked, writers, objects, tracked_list, memo, replaced): the walk's
 * records of queue[at:], appended to `records` -- as the generated record writers and container states of
 * memimg.image._bulk make them -- for as long as each object is of the common case; the index of the first object
 * it leaves to the Python walk (len(queue) when none: the queue grows as new objects are met).
 *
 * The common case: a tracked list (exactly `tracked_list`) whose items are all kept (below), or an entity whose
 * class has a plan in `plans` ((name, field names, member descriptors, raw setters), the walk's record writer made)
 * with every field set and kept. A value is kept if it is an ASCII str, an int of 64 bits, a bool or None (stored
 * as itself); an object of a type in `linked` whose _mi_img is `owner` and whose _mi_oid is set (["r", oid]); an
 * entity of a class in `writers` not yet attached (attached: its _mi_img and _mi_oid set, appended to `objects`
 * and `queue`; ["r", oid]); or, an entity's field only, a plain list (made a tracked one once per list -- `memo`,
 * by id -- attached and numbered, (obj, setter, list) noted in `replaced` and the field set to it; ["r", oid]).
 * A list of ASCII strs only is stored as itself. Everything of an object is looked at before anything is done,
 * so an object left to Python is untouched. */

/* Whether `v` is an entity of this image (base_type) with an id: 1, 0 (no), or -1 when it cannot tell cheaply. */
static inline int owned_oid(PyObject *v, PyObject *owner, PyObject **oid) {
    if (!PyObject_TypeCheck(v, base_type)) return -1;
    PyObject *img = *(PyObject **)((char *)v + owner_offset);
    *oid = *(PyObject **)((char *)v + oid_offset);
    if (img == NULL || *oid == NULL) return -1;
    return img == owner && *oid != Py_None;
}

enum { KEEP_INLINE = 1, KEEP_REF, KEEP_ATTACH, KEEP_CONTAIN };

/* How value `v` is kept (KEEP_*), 0 if it is left to Python, -1 with an error. `field`: an entity's field (a plain
 * list is contained there only). */
static int bulk_keep(PyObject *v, PyObject *owner, PyObject *linked, PyObject *writers, int field) {
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type) return PyUnicode_IS_ASCII(v) ? KEEP_INLINE : 0;
    if (t == &PyBool_Type || v == Py_None) return KEEP_INLINE;
    if (t == &PyLong_Type) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) return -1;
        return overflow ? 0 : KEEP_INLINE;
    }
    int is_linked = PySet_Contains(linked, (PyObject *)t);
    if (is_linked < 0) return -1;
    if (is_linked) {
        PyObject *oid;
        int owned = owned_oid(v, owner, &oid);
        if (owned > 0) return KEEP_REF;
        if (owned < 0) { /* a tracked collection: its attributes */
            PyObject *img = PyObject_GetAttr(v, s_mi_img);
            oid = img == NULL ? NULL : PyObject_GetAttr(v, s_mi_oid);
            int ok = img == owner && oid != NULL && oid != Py_None;
            Py_XDECREF(img);
            Py_XDECREF(oid);
            if (PyErr_Occurred()) {
                PyErr_Clear(); /* Python's walk says what is wrong */
                return 0;
            }
            if (ok) return KEEP_REF;
        }
    }
    if (t == &PyList_Type) return field ? KEEP_CONTAIN : 0;
    if (t == &PyDict_Type) return 0;
    int is_writer = PyDict_Contains(writers, (PyObject *)t);
    if (is_writer < 0) return -1;
    if (is_writer && PyObject_TypeCheck(v, base_type)) {
        PyObject *img = *(PyObject **)((char *)v + owner_offset);
        if (img == Py_None) return KEEP_ATTACH;
    }
    return 0;
}

/* ["r", oid] (new reference). */
static PyObject *bulk_ref(PyObject *oid) {
    PyObject *ref = PyList_New(2);
    if (ref == NULL) return NULL;
    PyList_SET_ITEM(ref, 0, Py_NewRef(s_r));
    PyList_SET_ITEM(ref, 1, Py_NewRef(oid));
    return ref;
}

/* Attach and number `v` (new): ["r", oid] (new reference). */
static PyObject *bulk_attach(PyObject *v, PyObject *owner, PyObject *objects, PyObject *queue) {
    PyObject *oid = PyLong_FromSsize_t(PyList_GET_SIZE(objects));
    if (oid == NULL) return NULL;
    Py_XSETREF(*(PyObject **)((char *)v + owner_offset), Py_NewRef(owner));
    Py_XSETREF(*(PyObject **)((char *)v + oid_offset), Py_NewRef(oid));
    PyObject *ref = NULL;
    if (PyList_Append(objects, v) == 0 && PyList_Append(queue, v) == 0) ref = bulk_ref(oid);
    Py_DECREF(oid);
    return ref;
}

/* The stored form of `v`, kept as `how` (new reference). */
static PyObject *bulk_value(PyObject *v, int how, PyObject *owner, PyObject *objects, PyObject *queue) {
    if (how == KEEP_INLINE) return Py_NewRef(v);
    PyObject *oid;
    if (owned_oid(v, owner, &oid) > 0) { /* KEEP_REF, or attached since it was looked at */
        Py_INCREF(oid); /* (bulk_ref allocates: a collection could run code that sets the slot) */
        PyObject *ref = bulk_ref(oid);
        Py_DECREF(oid);
        return ref;
    }
    if (how == KEEP_ATTACH) return bulk_attach(v, owner, objects, queue);
    oid = PyObject_GetAttr(v, s_mi_oid);
    if (oid == NULL) return NULL;
    PyObject *ref = bulk_ref(oid);
    Py_DECREF(oid);
    return ref;
}

/* Fill the new, empty list `made` with the items of list `source`, its storage the exact size (as list.extend fills
 * an empty list; PyList_SetSlice would leave room to grow: 48 bytes more for a list of two). */
static int list_fill_exact(PyObject *made, PyObject *source) {
    PyListObject *l = (PyListObject *)made;
    Py_ssize_t n = PyList_GET_SIZE(source);
    if (n == 0) return 0;
    if (l->ob_item != NULL || Py_SIZE(l) != 0) return PyList_SetSlice(made, 0, 0, source);
    Py_ssize_t size = (n + 1) & ~(Py_ssize_t)1; /* as CPython's list_preallocate_exact: an even number of slots */
    PyObject **items = PyMem_New(PyObject *, size);
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) items[i] = Py_NewRef(PyList_GET_ITEM(source, i));
    l->ob_item = items;
    l->allocated = size;
    Py_SET_SIZE(l, n);
    return 0;
}

/* Plain list `source`, in field `member` of `obj` (raw setter `setter`), as the tracked one: ["r", oid]. */
static PyObject *bulk_contain(PyObject *obj, PyObject *member, PyObject *setter, PyObject *source, PyObject *owner,
                              PyObject *tracked_list, PyObject *objects, PyObject *queue, PyObject *memo,
                              PyObject *replaced) {
    PyObject *key = PyLong_FromVoidPtr(source);
    if (key == NULL) return NULL;
    PyObject *made = PyDict_GetItemWithError(memo, key);
    PyObject *oid = NULL, *ref = NULL;
    if (made != NULL) {
        Py_INCREF(made);
    } else if (PyErr_Occurred()) {
        goto done;
    } else {
        made = PyType_GenericNew((PyTypeObject *)tracked_list, empty_tuple, NULL);
        if (made == NULL || list_fill_exact(made, source) < 0 || PyDict_SetItem(memo, key, made) < 0 ||
            PyObject_SetAttr(made, s_mi_img, owner) < 0 ||
            (oid = PyLong_FromSsize_t(PyList_GET_SIZE(objects))) == NULL || PyObject_SetAttr(made, s_mi_oid, oid) < 0 ||
            PyList_Append(objects, made) < 0 || PyList_Append(queue, made) < 0)
            goto done;
        Py_CLEAR(oid);
    }
    oid = PyObject_GetAttr(made, s_mi_oid);
    if (oid == NULL) goto done;
    { /* noted before the field is set, as the Python walk notes it */
        Py_ssize_t at = PyList_GET_SIZE(replaced);
        PyObject *note = PyTuple_Pack(3, obj, setter, source);
        int failed = note == NULL || PyList_SetSlice(replaced, at, at, note) < 0;
        Py_XDECREF(note);
        if (failed) goto done;
    }
    Py_XSETREF(*(PyObject **)((char *)obj + ((PyMemberDescrObject *)member)->d_member->offset), Py_NewRef(made));
    ref = bulk_ref(oid);
done:
    Py_DECREF(key);
    Py_XDECREF(made);
    Py_XDECREF(oid);
    return ref;
}

/* The record of tracked list `obj` (new reference); NULL with no error when Python is to write it. */
static PyObject *bulk_list(PyObject *obj, PyObject *owner, PyObject *linked, PyObject *writers, PyObject *objects,
                           PyObject *queue) {
    Py_ssize_t n = PyList_GET_SIZE(obj);
    int all_ascii = n > 0;
    for (Py_ssize_t i = 0; i < n && all_ascii; i++) {
        PyObject *v = PyList_GET_ITEM(obj, i);
        all_ascii = Py_TYPE(v) == &PyUnicode_Type && PyUnicode_IS_ASCII(v);
    }
    PyObject *oid = PyObject_GetAttr(obj, s_mi_oid);
    if (oid == NULL) return NULL;
    PyObject *state = NULL;
    if (all_ascii) {
        state = Py_NewRef(obj); /* a list of strs is its own state */
    } else {
        PyObject *items = PyList_GetSlice(obj, 0, n); /* what is looked at is what is stored */
        if (items == NULL) goto fail;
        n = PyList_GET_SIZE(items);
        char hows[256];
        char *how = n <= 256 ? hows : PyMem_Malloc(n);
        if (how == NULL) {
            Py_DECREF(items);
            PyErr_NoMemory();
            goto fail;
        }
        int keep = 1;
        for (Py_ssize_t i = 0; i < n && keep > 0; i++) {
            keep = bulk_keep(PyList_GET_ITEM(items, i), owner, linked, writers, 0);
            how[i] = (char)keep;
        }
        if (keep > 0) state = PyList_New(n);
        for (Py_ssize_t i = 0; state != NULL && i < n; i++) {
            PyObject *item = bulk_value(PyList_GET_ITEM(items, i), how[i], owner, objects, queue);
            if (item == NULL) Py_CLEAR(state);
            else PyList_SET_ITEM(state, i, item);
        }
        if (how != hows) PyMem_Free(how);
        Py_DECREF(items);
        if (state == NULL) goto fail; /* keep 0: Python's (no error); else the error */
    }
    PyObject *record = PyList_New(3);
    if (record == NULL) goto fail;
    PyList_SET_ITEM(record, 0, oid);
    PyList_SET_ITEM(record, 1, Py_NewRef(s_list));
    PyList_SET_ITEM(record, 2, state);
    return record;
fail:
    Py_DECREF(oid);
    Py_XDECREF(state);
    return NULL;
}

/* The record of entity `obj` by `plan` (new reference); NULL with no error when Python is to write it. */
static PyObject *bulk_entity(PyObject *obj, PyObject *plan, PyObject *owner, PyObject *linked, PyObject *writers,
                             PyObject *tracked_list, PyObject *objects, PyObject *queue, PyObject *memo,
                             PyObject *replaced) {
    PyObject *name = PyTuple_GET_ITEM(plan, 0), *names = PyTuple_GET_ITEM(plan, 1);
    PyObject *members = PyTuple_GET_ITEM(plan, 2), *setters = PyTuple_GET_ITEM(plan, 3);
    Py_ssize_t n = PyTuple_GET_SIZE(members);
    PyObject *values[WALK_FIELDS];
    int how[WALK_FIELDS];
    PyObject *oid;
    if (n > WALK_FIELDS) return NULL;
    if (!PyObject_TypeCheck(obj, base_type) || (oid = *(PyObject **)((char *)obj + oid_offset)) == NULL) return NULL;
    /* every field read first, as the record writers read them (one unset: Python's walk gives up) */
    Py_ssize_t got = read_slots(obj, members, values);
    if (got < 0) return NULL;
    Py_INCREF(oid);
    PyObject *record = NULL, *state = NULL;
    int keep = 1;
    for (Py_ssize_t i = 0; i < n && keep > 0; i++) keep = how[i] = bulk_keep(values[i], owner, linked, writers, 1);
    if (keep > 0 && (state = PyDict_New()) != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *v = how[i] == KEEP_CONTAIN
                              ? bulk_contain(obj, PyTuple_GET_ITEM(members, i), PyTuple_GET_ITEM(setters, i), values[i],
                                             owner, tracked_list, objects, queue, memo, replaced)
                              : bulk_value(values[i], how[i], owner, objects, queue);
            int failed = v == NULL || PyDict_SetItem(state, PyTuple_GET_ITEM(names, i), v) < 0;
            Py_XDECREF(v);
            if (failed) {
                Py_CLEAR(state);
                break;
            }
        }
    }
    if (state != NULL && (record = PyList_New(3)) != NULL) {
        PyList_SET_ITEM(record, 0, Py_NewRef(oid));
        PyList_SET_ITEM(record, 1, Py_NewRef(name));
        PyList_SET_ITEM(record, 2, Py_NewRef(state));
    }
    Py_XDECREF(state);
    for (Py_ssize_t i = 0; i < got; i++) Py_DECREF(values[i]);
    Py_DECREF(oid);
    return record;
}

static PyObject *bulk_records(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "bulk_records() takes 11 arguments");
        return NULL;
    }
    PyObject *queue = args[0], *plans = args[2], *records = args[3], *owner = args[4], *linked = args[5];
    PyObject *writers = args[6], *objects = args[7], *tracked_list = args[8], *memo = args[9], *replaced = args[10];
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) return NULL;
    if (!PyList_CheckExact(queue) || !PyDict_CheckExact(plans) || !PyList_CheckExact(records) || !PyAnySet_Check(linked) ||
        !PyDict_CheckExact(writers) || !PyList_CheckExact(objects) || !PyType_Check(tracked_list) ||
        !PyType_IsSubtype((PyTypeObject *)tracked_list, &PyList_Type) || !PyDict_CheckExact(memo) ||
        !PyList_CheckExact(replaced) || base_type == NULL || at < 0) {
        PyErr_SetString(PyExc_TypeError, "bulk_records(): bad arguments");
        return NULL;
    }
    for (; at < PyList_GET_SIZE(queue); at++) {
        PyObject *obj = Py_NewRef(PyList_GET_ITEM(queue, at));
        PyObject *t = (PyObject *)Py_TYPE(obj), *record = NULL;
        if (t == tracked_list) {
            record = bulk_list(obj, owner, linked, writers, objects, queue);
        } else {
            PyObject *plan = PyDict_GetItemWithError(plans, t);
            if (plan != NULL) {
                Py_ssize_t n;
                if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != 4 ||
                    !PyTuple_CheckExact(PyTuple_GET_ITEM(plan, 1)) || !PyTuple_CheckExact(PyTuple_GET_ITEM(plan, 2)) ||
                    !PyTuple_CheckExact(PyTuple_GET_ITEM(plan, 3)) ||
                    (n = PyTuple_GET_SIZE(PyTuple_GET_ITEM(plan, 1))) != PyTuple_GET_SIZE(PyTuple_GET_ITEM(plan, 2)) ||
                    n != PyTuple_GET_SIZE(PyTuple_GET_ITEM(plan, 3))) {
                    PyErr_Format(PyExc_TypeError, "bulk_records(): bad plan for %R", t);
                    Py_DECREF(obj);
                    return NULL;
                }
                Py_INCREF(plan);
                record = bulk_entity(obj, plan, owner, linked, writers, tracked_list, objects, queue, memo, replaced);
                Py_DECREF(plan);
            }
        }
        Py_DECREF(obj);
        if (record == NULL) {
            if (PyErr_Occurred()) return NULL;
            break; /* Python's walk writes this one */
        }
        int failed = PyList_Append(records, record);
        Py_DECREF(record);
        if (failed) return NULL;
    }
    return PyLong_FromSsize_t(at);
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
    PyObject *oid = PyDict_GetItemString(((PyTypeObject *)base)->tp_dict, "_mi_oid");
    if (oid == NULL || Py_TYPE(oid) != &PyMemberDescr_Type || ((PyMemberDescrObject *)oid)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "configure(): %R has no _mi_oid slot", base);
        return NULL;
    }
    oid_offset = ((PyMemberDescrObject *)oid)->d_member->offset;
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

/* same_dir(path, ctime_ns, ino): whether the directory at `path` (bytes: the file system's encoding of the store's
 * directory, os.fsencode) still has that ctime (ns) and inode number -- SQLiteStore's look after each commit that its
 * files were not moved or replaced (os.stat's result object was most of that look's cost). False when stat() fails
 * or when a number cannot be what stat() gives (-1: nothing trusted yet); it raises only for arguments of the wrong
 * types, so that a commit already written is never reported as failed by this look. */
static PyObject *same_dir(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "same_dir(path: bytes, ctime_ns: int, ino: int)");
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(args[0]);
    if ((Py_ssize_t)strlen(path) != PyBytes_GET_SIZE(args[0])) Py_RETURN_FALSE; /* a NUL inside: no such path */
    int overflow = 0;
    long long ctime_ns = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (overflow || (ctime_ns == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    unsigned long long ino = PyLong_AsUnsignedLongLong(args[2]);
    if (ino == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    /* compared as seconds and nanoseconds (st_ctime_ns is sec * 10**9 + nsec, 0 <= nsec < 10**9): no product to
     * overflow */
    long long sec = ctime_ns / 1000000000LL, nsec = ctime_ns % 1000000000LL;
    if (nsec < 0) {
        nsec += 1000000000LL;
        sec -= 1;
    }
    struct stat st;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stat(path, &st);
    Py_END_ALLOW_THREADS
    if (rc != 0) Py_RETURN_FALSE;
#if defined(__APPLE__)
    struct timespec ct = st.st_ctimespec;
#else
    struct timespec ct = st.st_ctim;
#endif
    return PyBool_FromLong((long long)ct.tv_sec == sec && (long long)ct.tv_nsec == nsec &&
                           (unsigned long long)st.st_ino == ino);
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
    {"configure_reads", configure_reads, METH_VARARGS, "configure_reads(TxState, RAW, DELETED): the compiled reads inside transactions on"},
    {"sync", sync_overlay, METH_O, "sync(tx): TxState.sync's loop; whether it was done (else Python does it)."},
    {"encode_sets", (PyCFunction)(void (*)(void))encode_sets, METH_FASTCALL,
     "encode_sets(pending, at, rows, tx, ts, kind, current, checksums, dumps): obj.set rows; the index reached."},
    {"apply_sets", (PyCFunction)(void (*)(void))apply_sets, METH_FASTCALL,
     "apply_sets(events, at, setters, kind): apply a run of obj.set events; the index reached."},
    {"fold_sets", (PyCFunction)(void (*)(void))fold_sets, METH_FASTCALL,
     "fold_sets(rows, expected, objects, fast_fields, code, checked, progress, decode, loads): replay's obj.set rows."},
    {"catch_sets", (PyCFunction)(void (*)(void))catch_sets, METH_FASTCALL,
     "catch_sets(first, rows, expected, objects, fast_fields, setters, code, decode, loads, progress, watch): a "
     "catch-up's one-row obj.set transactions."},
    {"outcome", (PyCFunction)(void (*)(void))outcome, METH_FASTCALL,
     "outcome(events, set_kind, del_kind, add_kind, native, counter_fields): TxState.outcome's events, or None."},
    {"encode_states", (PyCFunction)(void (*)(void))encode_states, METH_FASTCALL,
     "encode_states(batch, plans, encoders, out, seen, queue, linked, value, list_type): a snapshot's states."},
    {"bulk_records", (PyCFunction)(void (*)(void))bulk_records, METH_FASTCALL,
     "bulk_records(queue, at, plans, records, owner, linked, writers, objects, tracked_list, memo, replaced): a bulk "
     "attach's records; the index reached."},
    {"same_dir", (PyCFunction)(void (*)(void))same_dir, METH_FASTCALL,
     "same_dir(path, ctime_ns, ino): whether the directory at path (bytes) still has that ctime (ns) and inode number."},
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
    INTERN(s_set_field, "set_field")
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
    INTERN(s_mi_img, "_mi_img")
    INTERN(s_note_read, "note_read")
    INTERN(s_read_field, "read_field")
    INTERN(s_events, "events")
    INTERN(s_synced, "synced")
    INTERN(s_fields, "fields")
    INTERN(s_mi_oid, "_mi_oid")
    INTERN(s_done, "done")
    INTERN(s_views, "views")
    INTERN(s_reads, "reads")
    INTERN(s_host, "host")
    INTERN(s_start_seq, "start_seq")
    INTERN(s_r, "r")
    INTERN(s_list, "list")
#undef INTERN
    if ((empty_tuple = PyTuple_New(0)) == NULL) return NULL;
    crc_init();
    if (PyType_Ready(&TrackedFieldType) < 0 || PyType_Ready(&FastSetattrType) < 0 || PyType_Ready(&DictReadType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "TrackedField", (PyObject *)&TrackedFieldType) < 0 ||
        PyModule_AddObjectRef(m, "FastSetattr", (PyObject *)&FastSetattrType) < 0 ||
        PyModule_AddObjectRef(m, "DictRead", (PyObject *)&DictReadType) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", SPEEDUPS_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
