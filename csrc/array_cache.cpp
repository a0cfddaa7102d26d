// fastconv._array_cache: a NumPy memory handler that keeps large freed blocks for reuse.
//
// A training step allocates the same few dozen activation and gradient arrays, tens of MB
// each, every step. glibc serves blocks that large with fresh mmap pages, so every step pays
// the kernel for zeroing them again on first touch, a sizeable share of a CIFAR-10 step.
// While a fastconv.array_cache() block is open, this handler parks freed
// blocks of at least kMinBytes by exact size, up to a byte limit, and hands them back to the
// next request of that size. Everything else goes to malloc/free untouched, so arrays that
// outlive the block, or were allocated before it, are freed as usual.
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <Python.h>
#include <numpy/arrayobject.h>

#include <malloc.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // smaller blocks come from malloc's own bins
constexpr size_t kHugePageBytes = size_t(4) << 20;

struct Cache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  size_t cached_bytes = 0;
  size_t limit = 0;
  int open_blocks = 0;  // nested array_cache() blocks; caching is on while > 0
  unsigned long long hits = 0, misses = 0;

  void release_down_to(size_t bytes) {  // caller holds the mutex
    for (auto it = free_blocks.begin(); it != free_blocks.end() && cached_bytes > bytes;) {
      auto& list = it->second;
      while (!list.empty() && cached_bytes > bytes) {
        std::free(list.back());
        list.pop_back();
        cached_bytes -= it->first;
      }
      it = list.empty() ? free_blocks.erase(it) : std::next(it);
    }
  }
};

Cache g_cache;

void* take_cached(size_t size) {
  if (size < kMinBytes) return nullptr;
  std::lock_guard<std::mutex> lock(g_cache.mutex);
  if (g_cache.open_blocks == 0) return nullptr;
  auto it = g_cache.free_blocks.find(size);
  if (it == g_cache.free_blocks.end() || it->second.empty()) {
    ++g_cache.misses;
    return nullptr;
  }
  void* p = it->second.back();
  it->second.pop_back();
  g_cache.cached_bytes -= size;
  ++g_cache.hits;
  return p;
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
  if (ptr && size >= kMinBytes) {
    std::lock_guard<std::mutex> lock(g_cache.mutex);
    // the usable-size check guards the exact-size key against a caller passing a wrong size
    if (g_cache.open_blocks > 0 && g_cache.cached_bytes + size <= g_cache.limit &&
        malloc_usable_size(ptr) >= size) {
      g_cache.free_blocks[size].push_back(ptr);
      g_cache.cached_bytes += size;
      return;
    }
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
  g_cache.limit = g_cache.open_blocks > 0 ? previous_limit : 0;
  g_cache.release_down_to(g_cache.limit);
  Py_RETURN_NONE;
}

PyObject* stats(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(g_cache.mutex);
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:i}", "hits", g_cache.hits, "misses", g_cache.misses,
                       "cached_bytes", (unsigned long long)g_cache.cached_bytes, "min_bytes",
                       (unsigned long long)kMinBytes, "open_blocks", g_cache.open_blocks);
}

PyMethodDef g_methods[] = {
    {"enter", enter, METH_VARARGS, "Install the caching handler; returns what to restore."},
    {"exit", exit_block, METH_VARARGS, "Restore the previous handler and limit."},
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
