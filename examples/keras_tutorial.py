"""The seed tutorial's Keras CNN on fastconv, trained on CIFAR-10.

The Keras original and its fastconv twin (fastconv.nn.zoo.tutorial_net) read the same:
    model = Sequential()
    model.add(Conv2D(32, (3, 3), activation='relu', input_shape=(32, 32, 3)))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(25, (3, 3), activation='relu'))
    model.add(Flatten())
    model.add(Dense(100, activation='relu'))
    model.add(Dense(10, activation='softmax'))
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    model.fit(x_train, y_train, epochs=..., validation_data=(x_test, y_test))
with `from fastconv.nn import Sequential, Conv2D, MaxPooling2D, Flatten, Dense` in place of
the Keras imports. --deeper trains the variant with two conv-BN-conv-pool blocks.

Run:  python examples/keras_tutorial.py --data ../shared/datasets/cifar10-jpeg.tar.gz
"""

import argparse

from fastconv import data
from fastconv.nn import zoo


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="CIFAR-10 archive (default: cache or download)")
    p.add_argument("--deeper", action="store_true")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-subset", type=int, default=None, help="train on N random images")
    args = p.parse_args()

    (x_train, y_train), (x_test, y_test) = data.load_cifar10(args.data)
    if args.train_subset:
        (x_train, y_train), _ = data.train_val_split(
            x_train, y_train, 1 - args.train_subset / len(x_train)
        )
    model = zoo.tutorial_net(deeper=args.deeper)
    model.summary()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # like the tutorial, pixels are scaled to [0, 1] (fastconv.data.default_preprocess)
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_test, y_test),
    )
    loss, acc = model.evaluate(x_test, y_test)
    print(f"test loss {loss:.4f}, test accuracy {acc:.4f}")
    model.save_weights("tutorial_weights.npz")
    print("weights saved to tutorial_weights.npz")


if __name__ == "__main__":
    main()
