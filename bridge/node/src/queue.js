'use strict';

/**
 * A FIFO with a fixed capacity that evicts its OLDEST items when full. O(1) push and eviction
 * (a head index over an array, compacted now and then), so a 10,000-item buffer under a flood of
 * emissions costs no array shifting.
 *
 * @template T
 */
class BoundedQueue {
  /** @param {number} capacity maximum number of items kept (integer >= 1) */
  constructor(capacity) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`queue capacity must be an integer >= 1, got ${String(capacity)}`);
    }
    this.capacity = capacity;
    /** @type {T[]} */
    this._items = [];
    this._head = 0;
  }

  /** @returns {number} items currently held */
  get length() {
    return this._items.length - this._head;
  }

  /**
   * Appends an item; evicts the oldest items beyond capacity.
   * @param {T} item
   * @returns {T[]} the evicted items, oldest first (empty when nothing was evicted)
   */
  push(item) {
    this._items.push(item);
    return this._evictOverflow();
  }

  /**
   * Puts items back in front (they are older than everything held, e.g. a batch whose send
   * failed); evicts the oldest items beyond capacity.
   * @param {T[]} items oldest first
   * @returns {T[]} the evicted items, oldest first
   */
  unshiftAll(items) {
    if (items.length === 0) return [];
    this._items = items.concat(this._items.slice(this._head));
    this._head = 0;
    return this._evictOverflow();
  }

  /**
   * Removes and returns up to maxCount items from the front, stopping before the total of
   * sizeOf(item) would exceed maxSize; the first item is always taken, whatever its size.
   * @param {number} maxCount
   * @param {number} maxSize
   * @param {(item: T) => number} sizeOf
   * @returns {T[]} oldest first
   */
  take(maxCount, maxSize, sizeOf) {
    const out = [];
    let size = 0;
    while (out.length < maxCount && this.length > 0) {
      const item = this._items[this._head];
      const itemSize = sizeOf(item);
      if (out.length > 0 && size + itemSize > maxSize) break;
      out.push(item);
      size += itemSize;
      this._items[this._head] = /** @type {T} */ (/** @type {unknown} */ (undefined));
      this._head += 1;
    }
    this._compact();
    return out;
  }

  /**
   * Empties the queue.
   * @returns {T[]} what it held, oldest first
   */
  clear() {
    const out = this._items.slice(this._head);
    this._items = [];
    this._head = 0;
    return out;
  }

  /** @returns {T[]} */
  _evictOverflow() {
    const excess = this.length - this.capacity;
    if (excess <= 0) return [];
    const evicted = this._items.slice(this._head, this._head + excess);
    for (let i = this._head; i < this._head + excess; i += 1) {
      this._items[i] = /** @type {T} */ (/** @type {unknown} */ (undefined));
    }
    this._head += excess;
    this._compact();
    return evicted;
  }

  _compact() {
    if (this._head === this._items.length) {
      this._items = [];
      this._head = 0;
    } else if (this._head >= 1024 && this._head * 2 >= this._items.length) {
      this._items = this._items.slice(this._head);
      this._head = 0;
    }
  }
}

module.exports = { BoundedQueue };
