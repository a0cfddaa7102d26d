// fastconv._array_cache: a NumPy memory handler that keeps large freed blocks for reuse.
//
// Blocks that large come from glibc as fresh mmap pages, and the kernel zeroes every page on
// first touch: for a memory-bound kernel writing a new 64 MB output that zeroing takes longer
// than the kernel itself. Code that allocates outputs of the same sizes call after call (a
// training step, an inference loop) need not pay it every time. This handler parks freed
// blocks of at least kMinBytes by exact size, up to a byte limit, dropping the longest-parked
// first, and hands them back to the next request of that size. Two kinds of arrays are
// allocated through it: fastconv's own outputs (empty()), always, and every NumPy array made
// in a context inside a fastconv.array_cache() block. Everything else goes to malloc/free
// untouched.
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <Python.h>
#include <numpy/arrayobject.h>

#include <malloc.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <iterator>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // smaller blocks come from malloc's own bins
constexpr size_t kHugePageBytes = size_t(4) << 20;
constexpr size_t kDefaultLimit = size_t(1) << 30;
constexpr size_t kAlignment = 64;  // a cache line, and one AVX-512 register

struct Parked {
  size_t size;
  void* block;
};

struct Cache {
  std::mutex mutex;
  std::list<Parked> parked;  // longest-parked first
  // per size, its entries in `parked` in the same order, so the last is the warmest
  std::unordered_map<size_t, std::vector<std::list<Parked>::iterator>> by_size;
  size_t cached_bytes = 0;
  size_t base_limit = kDefaultLimit;  // outside array_cache() blocks
  size_t limit = kDefaultLimit;
  int open_blocks = 0;
  unsigned long long hits = 0, misses = 0;

  void* take(size_t size) {  // caller holds the mutex
    auto it = by_size.find(size);
    if (it == by_size.end()) {
      ++misses;
      return nullptr;
    }
    auto entry = it->second.back();
    void* block = entry->block;
    it->second.pop_back();
    if (it->second.empty()) by_size.erase(it);
    parked.erase(entry);
    cached_bytes -= size;
    ++hits;
    return block;
  }

  bool park(void* block, size_t size) {  // caller holds the mutex
    if (size > limit) return false;
    parked.push_back({size, block});
    by_size[size].push_back(std::prev(parked.end()));
    cached_bytes += size;
    release_down_to(limit);
    return true;
  }

  void release_down_to(size_t bytes) {  // caller holds the mutex
    while (cached_bytes > bytes) {
      const Parked oldest = parked.front();
      auto same_size = by_size.find(oldest.size);
      same_size->second.erase(same_size->second.begin());
      if (same_size->second.empty()) by_size.erase(same_size);
      parked.pop_front();
      cached_bytes -= oldest.size;
      std::free(oldest.block);
    }
  }
};

Cache g_cache;

void* take_cached(size_t size) {
  if (size < kMinBytes) return nullptr;
  std::lock_guard<std::mutex> lock(g_cache.mutex);
  return g_cache.take(size);
}

void* fresh(size_t size) {
  void* p = std::malloc(size ? size : 1);
#ifdef MADV_HUGEPAGE
  // as NumPy's own allocator does: fewer page faults and TLB misses on big arrays
  if (p && size >= kHugePageBytes) {
    const uintptr_t page = 4096;
    const uintptr_t start = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + size) & ~(page - 1);
    if (end > start) madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);
  }
#endif
  return p;
}

void* cache_malloc(void*, size_t size) {
  void* p = take_cached(size);
  return p ? p : fresh(size);
}

void* cache_calloc(void*, size_t count, size_t elsize) {
  if (elsize && count > SIZE_MAX / elsize) return nullptr;
  const size_t size = count * elsize;
  if (void* p = take_cached(size)) return std::memset(p, 0, size);
  return std::calloc(count ? count : 1, elsize ? elsize : 1);
}

// Every block, cached or not, came from malloc, so realloc and free apply to all of them.
void* cache_realloc(void*, void* ptr, size_t size) { return std::realloc(ptr, size ? size : 1); }

void cache_free(void*, void* ptr, size_t size) {
  // the usable-size check guards the exact-size key against a caller passing a wrong size
  if (ptr && size >= kMinBytes && malloc_usable_size(ptr) >= size) {
    std::lock_guard<std::mutex> lock(g_cache.mutex);
    if (g_cache.park(ptr, size)) return;
  }
  std::free(ptr);
}

PyDataMem_Handler g_handler = {
    "fastconv_array_cache", 1, {nullptr, cache_malloc, cache_calloc, cache_realloc, cache_free}};

PyObject* g_handler_capsule = nullptr;

// enter(limit_bytes) -> (previous handler, previous limit): installs the handler in the
// current context; exit(previous handler, previous limit) puts things back.
PyObject* enter(PyObject*, PyObject* args) {
  unsigned long long limit;
  if (!PyArg_ParseTuple(args, "K", &limit)) return nullptr;
  PyObject* previous = PyDataMem_SetHandler(g_handler_capsule);
  if (!previous) return nullptr;
  unsigned long long previous_limit;
  {
    std::lock_guard<std::mutex> lock(g_cache.mutex);
    previous_limit = g_cache.limit;
    g_cache.limit = limit;
    ++g_cache.open_blocks;
    g_cache.release_down_to(limit);
  }
  return Py_BuildValue("NK", previous, previous_limit);
}

PyObject* exit_block(PyObject*, PyObject* args) {
  PyObject* previous;
  unsigned long long previous_limit;
  if (!PyArg_ParseTuple(args, "OK", &previous, &previous_limit)) return nullptr;
  PyObject* replaced = PyDataMem_SetHandler(previous);
  if (!replaced) return nullptr;
  Py_DECREF(replaced);
  std::lock_guard<std::mutex> lock(g_cache.mutex);
  g_cache.open_blocks = g_cache.open_blocks > 0 ? g_cache.open_blocks - 1 : 0;
  g_cache.limit = g_cache.open_blocks > 0 ? previous_limit : g_cache.base_limit;
  g_cache.release_down_to(g_cache.limit);
  Py_RETURN_NONE;
}

// An output's block goes back through cache_free when its array dies: the array's base is a
// capsule holding the block, with the block's size as the capsule's context.
constexpr char kBlockName[] = "fastconv_block";

void return_block(PyObject* capsule) {
  void* block = PyCapsule_GetPointer(capsule, kBlockName);
  cache_free(nullptr, block, reinterpret_cast<size_t>(PyCapsule_GetContext(capsule)));
}

// Bytes of an array of `dims` with `itemsize`-byte elements, or -1 with ValueError set.
Py_ssize_t array_bytes(const PyArray_Dims& dims, Py_ssize_t itemsize) {
  Py_ssize_t bytes = itemsize;
  for (int i = 0; i < dims.len; ++i) {
    if (dims.ptr[i] < 0) {
      PyErr_SetString(PyExc_ValueError, "negative dimensions are not allowed");
      return -1;
    }
    if (dims.ptr[i] && bytes > (PY_SSIZE_T_MAX - Py_ssize_t(kAlignment)) / dims.ptr[i]) {
      PyErr_SetString(PyExc_ValueError, "array is too big: more than 2**63 bytes");
      return -1;
    }
    bytes *= dims.ptr[i];
  }
  return bytes;
}

// A new C-contiguous array of `dims` whose data starts on a 64-byte boundary, its block
// taken through the cache; nullptr with an exception set on failure. Borrows descr.
PyObject* aligned_array(PyArray_Descr* descr, const PyArray_Dims& dims) {
  const Py_ssize_t nbytes = array_bytes(dims, PyDataType_ELSIZE(descr));
  if (nbytes < 0) return nullptr;
  const size_t size = size_t(nbytes) + kAlignment;
  void* block = cache_malloc(nullptr, size);
  if (!block) return PyErr_NoMemory();
  PyObject* owner = PyCapsule_New(block, kBlockName, return_block);
  if (!owner) {
    cache_free(nullptr, block, size);
    return nullptr;
  }
  PyCapsule_SetContext(owner, reinterpret_cast<void*>(size));
  const uintptr_t start = reinterpret_cast<uintptr_t>(block);
  void* data = reinterpret_cast<void*>((start + kAlignment - 1) & ~uintptr_t(kAlignment - 1));
  Py_INCREF(descr);  // NewFromDescr steals it, even when it fails
  PyObject* array = PyArray_NewFromDescr(&PyArray_Type, descr, dims.len, dims.ptr, nullptr, data,
                                         NPY_ARRAY_CARRAY, nullptr);
  if (!array) {
    Py_DECREF(owner);
    return nullptr;
  }
  if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(array), owner) < 0) {
    Py_DECREF(array);  // SetBaseObject stole owner even so
    return nullptr;
  }
  return array;
}

// empty(shape, dtype) -> an uninitialised aligned_array, whatever the context's handler.
// Taking the block directly, not by swapping the context's handler in and out, saves
// microseconds per output.
PyObject* empty(PyObject*, PyObject* args) {
  PyObject* shape;
  PyArray_Descr* descr = nullptr;
  if (!PyArg_ParseTuple(args, "OO&", &shape, PyArray_DescrConverter, &descr)) return nullptr;
  PyArray_Dims dims = {nullptr, 0};
  PyObject* array = nullptr;
  if (PyArray_IntpConverter(shape, &dims)) {
    array = aligned_array(descr, dims);
    PyDimMem_FREE(dims.ptr);
  }
  Py_DECREF(descr);
  return array;
}

// set_limit(bytes) -> the previous limit outside array_cache() blocks.
PyObject* set_limit(PyObject*, PyObject* arg) {
  const unsigned long long limit = PyLong_AsUnsignedLongLong(arg);
  if (PyErr_Occurred()) return nullptr;
  std::lock_guard<std::mutex> lock(g_cache.mutex);
  const unsigned long long previous = g_cache.base_limit;
  g_cache.base_limit = limit;
  if (g_cache.open_blocks == 0) {
    g_cache.limit = limit;
    g_cache.release_down_to(limit);
  }
  return PyLong_FromUnsignedLongLong(previous);
}

PyObject* release(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(g_cache.mutex);
  g_cache.release_down_to(0);
  Py_RETURN_NONE;
}

PyObject* stats(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(g_cache.mutex);
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:i}", "hits", g_cache.hits, "misses", g_cache.misses,
                       "cached_bytes", (unsigned long long)g_cache.cached_bytes, "limit",
                       (unsigned long long)g_cache.limit, "min_bytes",
                       (unsigned long long)kMinBytes, "open_blocks", g_cache.open_blocks);
}

PyMethodDef g_methods[] = {
    {"enter", enter, METH_VARARGS, "Install the caching handler; returns what to restore."},
    {"exit", exit_block, METH_VARARGS, "Restore the previous handler and limit."},
    {"empty", empty, METH_VARARGS, "A new 64-byte aligned array, allocated through the cache."},
    {"set_limit", set_limit, METH_O, "Set the limit outside blocks; returns the previous one."},
    {"release", release, METH_NOARGS, "Free every parked block."},
    {"stats", stats, METH_NOARGS, "Counters of the cache: hits, misses, cached_bytes, ..."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef g_module = {PyModuleDef_HEAD_INIT, "_array_cache",
                        "NumPy memory handler that reuses large freed blocks.", -1, g_methods};

}  // namespace

PyMODINIT_FUNC PyInit__array_cache() {
  import_array();
  g_handler_capsule = PyCapsule_New(&g_handler, "mem_handler", nullptr);
  if (!g_handler_capsule) return nullptr;
  return PyModule_Create(&g_module);
}
