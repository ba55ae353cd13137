/* SPDX-License-Identifier: MIT */
/*
 * The least a sys.monitoring tool can cost (`make bench`'s "monitoring"
 * columns): METH_FASTCALL callbacks, as pyusdt's are, that do nothing
 * (`noop`), read CLOCK_MONOTONIC and keep it (`clock`), the least a
 * tool that times each call does, or read the time stamp counter and keep
 * it (`tsc`; the clock elsewhere than x86-64), which a tool could convert
 * to time later. Built by bench/bench.py.
 */
#include <Python.h>
#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

static volatile long long last_ns;

static PyObject *noop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_RETURN_NONE;
}

static PyObject *clock_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	last_ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
	Py_RETURN_NONE;
}

static PyObject *tsc_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
#if defined(__x86_64__)
	last_ns = (long long)__rdtsc();
	Py_RETURN_NONE;
#else
	return clock_read(self, args, nargs);
#endif
}

static PyMethodDef methods[] = {
	{ "noop", (PyCFunction)(void (*)(void))noop, METH_FASTCALL, "Does nothing." },
	{ "clock", (PyCFunction)(void (*)(void))clock_read, METH_FASTCALL,
	  "Reads CLOCK_MONOTONIC." },
	{ "tsc", (PyCFunction)(void (*)(void))tsc_read, METH_FASTCALL,
	  "Reads the time stamp counter." },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "monitoring_floor", NULL, -1, methods };

PyMODINIT_FUNC PyInit_monitoring_floor(void)
{
	return PyModule_Create(&module);
}
