from cifar_lab.train import main

main()
