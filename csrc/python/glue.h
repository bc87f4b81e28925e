/*
 * csrc/python/glue.h - functions of the CPython glue that the cffi module
 * exposes.  Everything here runs with the GIL held (see README.md).
 */
#ifndef QLOOP_PY_GLUE_H
#define QLOOP_PY_GLUE_H

/* cffi:begin */
/* 1 if the calling thread holds the GIL (PyGILState_Check()), else 0. */
int qlpy_gil_held(void);
/* cffi:end */

/* Install libqloop's blocking hooks (release the GIL while blocked). */
void qlpy_install_blocking_hooks(void);

#endif
