/* Give a Cython extension type an am_send slot, so `await` can take a finished
 * call's result without a StopIteration. Python.h is available here: this
 * header belongs to the Python-facing runner, not to the core in csrc/. */
#ifndef RS_RUNNER_SLOTS_H
#define RS_RUNNER_SLOTS_H
#include <Python.h>
#include <stdint.h>
#include <time.h>

/* The same clock as time.monotonic_ns() on POSIX, without the Python call. */
static inline int64_t rs_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void rs_install_am_send(PyObject *tp, void *fn) {
    PyTypeObject *t = (PyTypeObject *)tp;
    if (t->tp_as_async != NULL) t->tp_as_async->am_send = (sendfunc)fn;
}
static inline double rs_monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#endif
