from purchasepred.cli import main

main()
